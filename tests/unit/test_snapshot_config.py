"""The snapshots: section and storage.volume_id: optional, validated, named problems."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.config import ConfigError
from tests.support.aws import make_config


def test_defaults_leave_snapshots_off(tmp_path):
    config = make_config(tmp_path)
    assert config.snapshots.enabled is False
    assert str(config.snapshots.schedule) == "0 3 * * *"
    assert (config.snapshots.retain.last, config.snapshots.retain.daily) == (7, 7)
    assert config.snapshots.retain.weekly == 4
    assert config.snapshots.copy_to_region is None
    assert config.storage.volume_id is None


def test_the_section_as_the_issue_shows_it(tmp_path):
    config = make_config(
        tmp_path,
        snapshots={
            "enabled": True,
            "schedule": "6h",
            "retain": {"last": 4, "daily": 14, "weekly": 8},
            "tags": {"team": "storage"},
            "copy_to_region": "eu-west-1",
        },
    )
    assert config.snapshots.retain.daily == 14
    assert config.snapshots.tags == {"team": "storage"}
    assert config.snapshots.schedule.every == timedelta(hours=6)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"schedule": "daily"}, "snapshots.schedule: 'daily' is neither an interval"),
        ({"schedule": "4m"}, "snapshots.schedule: interval '4m' is shorter than 5m"),
        ({"schedule": 60}, "snapshots.schedule: interval '1m' is shorter than 5m"),
        ({"schedule": "61 3 * * *"}, "snapshots.schedule: '61 3 * * *' is not a valid cron"),
        ({"retain": {"last": 0}}, "snapshots.retain.last: input should be greater than or equal"),
        ({"tags": {"backup-agent:x": "1"}}, "snapshots.tags: tag 'backup-agent:x'"),
        ({"copy_to_region": "Europe"}, "snapshots.copy_to_region: 'Europe' is not a region"),
        ({"retain": {"monthly": 3}}, "snapshots.retain.monthly: unknown key"),
    ],
)
def test_problems_name_their_key(tmp_path, section, problem):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, snapshots=section)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_storage_volume_id_must_look_like_an_ebs_id(tmp_path):
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, storage={"root": str(tmp_path), "volume_id": "disk1"})
    assert caught.value.problems[0].startswith("storage.volume_id: 'disk1' is not an EBS")
