"""The metrics:, alerts:, alarms: and schedules: sections: optional, validated."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from agent.config import parse_config
from agent.errors import ConfigError
from tests.support.aws import make_config


def test_without_the_sections_the_defaults_apply_and_nothing_alerts(backup_root):
    config = make_config(backup_root)
    assert config.metrics.namespace == "BackupAgent"
    assert config.metrics.prometheus == "127.0.0.1:19108"
    assert config.alerts.sns_topic_arn is None and config.alerts.email is None
    assert config.alerts.disk_used_percent == 85
    assert config.schedules == {}


def test_the_issue_example_parses(backup_root):
    config = make_config(
        backup_root,
        metrics={"namespace": "BackupAgent", "prometheus": None},
        alerts={
            "sns_topic_arn": "arn:aws:sns:us-east-1:123456789012:backup-alerts",
            "email": {"sender": "backup-agent@example.com", "recipients": ["ops@example.com"]},
            "disk_used_percent": 85,
        },
    )
    assert config.metrics.prometheus is None
    assert config.alerts.email is not None and config.alerts.email.recipients == ["ops@example.com"]


def test_schedules_accept_seconds_crontab_lines_mappings_and_null(backup_root):
    config = make_config(
        backup_root,
        schedules={
            "metrics": 30,
            "digest": "0 7 * * 1-5",
            "queues": {"every": 3600},
            "disk": None,
            "snapshot-metrics": "5m",
        },
    )
    assert config.schedules["metrics"].every == timedelta(seconds=30)
    assert config.schedules["digest"].cron == "0 7 * * 1-5"
    assert config.schedules["queues"].every == timedelta(hours=1)
    assert config.schedules["disk"] is None
    assert config.schedules["snapshot-metrics"].every == timedelta(minutes=5)


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"metrics": {"prometheus": "9108"}}, "metrics.prometheus: '9108' is not HOST:PORT"),
        ({"alerts": {"sns_topic_arn": "backup-alerts"}}, "alerts.sns_topic_arn: 'backup-alerts'"),
        ({"alerts": {"email": {"sender": "a@b.c", "recipients": []}}}, "alerts.email.recipients"),
        ({"alerts": {"disk_used_percent": 120}}, "alerts.disk_used_percent"),
        (
            {"schedules": {"metrics": "every minute"}},
            "schedules.metrics: 'every minute' is neither an interval",
        ),
        ({"schedules": {"metrics": {"every": 5, "cron": "* * * * *"}}}, "exactly one"),
        ({"schedules": {"scrub": {"every": 3600}}}, "schedules.scrub: the scrub job runs on"),
        ({"alerts": {"sms": "+1555"}}, "alerts.sms: unknown key"),
    ],
)
def test_mistakes_are_named(backup_root, sections, problem):
    with pytest.raises(ConfigError) as caught:
        make_config(backup_root, **sections)
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_the_commented_example_in_config_yaml_is_valid():
    text = (Path(__file__).parents[2] / "config.yaml").read_text()
    raw = yaml.safe_load(text)
    block = text.split("# Monitoring (optional")[1].split("\n", 1)[1].split("\n\n")[0]
    raw.update(yaml.safe_load("\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines())))
    config = parse_config(raw)
    assert config.alerts.sns_topic_arn and config.schedules["digest"].cron == "0 8 * * *"
