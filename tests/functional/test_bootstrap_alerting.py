"""bootstrap-aws creates the alerts topic and starts SES verification, once."""

from __future__ import annotations

from pydantic import BaseModel

from agent.config import Config
from agent.operations.bootstrap import Bootstrap
from tests.support.aws import make_config

TOPIC_ARN = "arn:aws:sns:us-east-1:123456789012:backup-agent-alerts"
SENDER = "backups@example.com"


class _Email(BaseModel):
    sender: str


class _Alerts(BaseModel):
    sns_topic_arn: str | None = None
    email: _Email | None = None


class ConfigWithAlerts(Config):
    """The shape of the alerts section the monitoring feature adds."""

    alerts: _Alerts | None = None


def _config(backup_root) -> ConfigWithAlerts:
    base = make_config(backup_root).model_dump()
    base["alerts"] = {"sns_topic_arn": TOPIC_ARN, "email": {"sender": SENDER}}
    return ConfigWithAlerts.model_validate(base)


def test_topic_and_identity_are_created_then_left_alone(aws, backup_root):
    config = _config(backup_root)

    first = Bootstrap(config, aws).run()
    second = Bootstrap(config, aws).run()

    assert f"topic {TOPIC_ARN}" in first.created
    assert f"SES identity {SENDER} (verification mail sent)" in first.created
    assert f"topic {TOPIC_ARN}" in second.existing
    assert any(e.startswith(f"SES identity {SENDER}") for e in second.existing)
    assert not [c for c in second.created if "topic" in c or "SES" in c]
    topics = aws.sns().list_topics()["Topics"]
    assert [t["TopicArn"] for t in topics] == [TOPIC_ARN]
    assert SENDER in aws.ses().list_identities()["Identities"]


def test_without_an_alerts_section_nothing_is_created(aws, config):
    report = Bootstrap(config, aws).run()
    assert not [c for c in report.created if "topic" in c or "SES" in c]
    assert aws.sns().list_topics()["Topics"] == []
