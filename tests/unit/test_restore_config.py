"""The optional `restore:` config section."""

from __future__ import annotations

import pytest

from agent.errors import ConfigError
from agent.restore.share import lifecycle_days
from agent.schedule import duration_seconds
from tests.support.aws import make_config


def test_the_agent_runs_without_a_restore_section(backup_root):
    config = make_config(backup_root)

    assert config.restore.staging_bucket is None
    assert config.restore.share_expiry_seconds == 86400


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("7d", 604800), ("45", 45)]
)
def test_durations(text, seconds):
    assert duration_seconds(text) == seconds


@pytest.mark.parametrize("text", ["", "0h", "-1d", "1y", "h", "1.5s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        duration_seconds(text)


def test_restore_section_problems_name_their_keys(backup_root):
    with pytest.raises(ConfigError) as error:
        make_config(
            backup_root,
            restore={"staging_bucket": "s", "share_expiry": "8d", "staging_prefix": "/x", "y": 1},
        )

    problems = "\n".join(error.value.problems)
    assert "restore.share_expiry: '8d' is longer than 7d" in problems
    assert "restore.staging_prefix:" in problems
    assert "restore.y: unknown key" in problems


def test_lifecycle_rounds_up_to_whole_days(backup_root):
    config = make_config(backup_root, restore={"staging_bucket": "x-y-z", "share_expiry": "36h"})

    assert lifecycle_days(config.restore) == 2


def test_recovery_buckets_default_to_none_and_are_checked(backup_root):
    assert make_config(backup_root).restore.recovery_buckets == []
    config = make_config(backup_root, restore={"recovery_buckets": ["recovery-area"]})
    assert config.restore.recovery_buckets == ["recovery-area"]
    with pytest.raises(ConfigError) as error:
        make_config(backup_root, restore={"recovery_buckets": ["a/b"]})
    assert "restore.recovery_buckets: 'a/b' is not a bucket name" in "\n".join(error.value.problems)
