"""Monitoring against moto: CloudWatch metrics, alarms and dashboard, SNS and SES alerts."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.ses.models import ses_backends

from agent.cli import agent as cli
from agent.cli.rejected_config import report_rejected_config
from agent.config import Config
from agent.errors import ConfigError
from agent.monitoring.alerts import AlertKind, backup_gave_up
from agent.monitoring.channels import EmailChannel, SnsChannel
from agent.monitoring.dispatcher import AlertDispatcher
from agent.monitoring.metrics import CloudWatchPublisher, DiskUsage, Sampler
from agent.operations.alarms import Alarms
from agent.operations.dashboard import Dashboard
from agent.stats import Stats
from tests.support.aws import REGION, make_config

DIMS = {"InstanceId": "i-0test", "Volume": "/mnt/backups"}
SENDER = "backup-agent@example.com"
OPS = "ops@example.com"


def usage_87(root: Path) -> DiskUsage:
    return DiskUsage(total=1000, used=870, free=130, percent=87.0)


@pytest.fixture
def topic(aws):
    sns = aws.session.client("sns")
    arn = sns.create_topic(Name="backup-alerts")["TopicArn"]
    inbox = aws.sqs.create_queue(QueueName="alerts-inbox")["QueueUrl"]
    inbox_arn = aws.sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(
        TopicArn=arn,
        Protocol="sqs",
        Endpoint=inbox_arn,
        Attributes={"RawMessageDelivery": "false"},
    )
    return arn, inbox


def inbox_messages(aws, inbox: str) -> list[dict]:
    found = []
    while True:
        batch = aws.sqs.receive_message(QueueUrl=inbox, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return found
        for message in batch:
            found.append(json.loads(message["Body"]))
            aws.sqs.delete_message(QueueUrl=inbox, ReceiptHandle=message["ReceiptHandle"])


def sent_emails() -> list:
    return list(ses_backends[DEFAULT_ACCOUNT_ID][REGION].sent_messages)


def alerting_config(root: Path, topic_arn: str, **extra) -> Config:
    return make_config(
        root,
        alerts={
            "sns_topic_arn": topic_arn,
            "email": {"sender": SENDER, "recipients": [OPS]},
        },
        **extra,
    )


# -- CloudWatch metrics ----------------------------------------------------------------------


def test_sampled_figures_reach_cloudwatch(aws):
    cloudwatch = aws.session.client("cloudwatch")
    stats = Stats()
    stats.record_success("stored", 4096, 1024, 1.5)
    stats.record_success("stored", 4096, 1024, 2.5)
    stats.record_failure("PermanentError")
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", DIMS)
    publisher.add(Sampler(stats, Path("/mnt/backups"), disk=usage_87).sample())
    assert publisher.flush() > 0

    listed = cloudwatch.list_metrics(Namespace="BackupAgent")["Metrics"]
    names = {m["MetricName"] for m in listed}
    assert {
        "DiskUsedPercent",
        "DiskFreeBytes",
        "BackupsSucceeded",
        "BackupsFailed",
        "BytesBackedUp",
        "BytesStored",
        "SecondsSinceLastBackup",
        "MessagesInFlight",
    } <= names
    assert all(
        sorted((d["Name"], d["Value"]) for d in m["Dimensions"]) == sorted(DIMS.items())
        for m in listed
    )
    now = datetime.now(UTC)
    stats_out = cloudwatch.get_metric_statistics(
        Namespace="BackupAgent",
        MetricName="BytesBackedUp",
        Dimensions=[{"Name": k, "Value": v} for k, v in DIMS.items()],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=["Sum"],
    )["Datapoints"]
    assert sum(p["Sum"] for p in stats_out) == 8192
    disk = cloudwatch.get_metric_statistics(
        Namespace="BackupAgent",
        MetricName="DiskUsedPercent",
        Dimensions=[{"Name": k, "Value": v} for k, v in DIMS.items()],
        StartTime=now - timedelta(minutes=5),
        EndTime=now + timedelta(minutes=5),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert [p["Maximum"] for p in disk] == [87.0]


# -- alarms and dashboard -------------------------------------------------------------------


def test_alarms_are_created_with_thresholds_and_actions_and_reapplying_changes_nothing(
    aws, backup_root, topic
):
    arn, _ = topic
    config = alerting_config(backup_root, arn, alarms={"no_backup_hours": 6})
    cloudwatch = aws.session.client("cloudwatch")
    first = Alarms(cloudwatch, config, DIMS).apply()
    assert [c.action for c in first] == ["created"] * 8
    alarms = {
        a["AlarmName"]: a
        for a in cloudwatch.describe_alarms(AlarmNamePrefix="backup-agent")["MetricAlarms"]
    }
    disk = alarms["backup-agent-i-0test-disk-space"]
    assert (disk["MetricName"], disk["Threshold"], disk["EvaluationPeriods"], disk["Period"]) == (
        "DiskUsedPercent",
        85.0,
        2,
        300,
    )
    assert disk["ComparisonOperator"] == "GreaterThanThreshold"
    no_backup = alarms["backup-agent-i-0test-no-backup"]
    assert no_backup["Threshold"] == 6 * 3600 and no_backup["TreatMissingData"] == "breaching"
    failed = alarms["backup-agent-i-0test-failed-backups"]
    assert (failed["MetricName"], failed["Statistic"]) == ("BackupsFailed", "Sum")
    dlq = alarms["backup-agent-backup-events-dlq-messages"]
    assert dlq["Namespace"] == "AWS/SQS"
    assert dlq["Dimensions"] == [{"Name": "QueueName", "Value": "backup-events-dlq"}]
    oldest = alarms["backup-agent-backup-events-oldest-message"]
    assert (
        oldest["Namespace"],
        oldest["MetricName"],
        oldest["Dimensions"],
        oldest["Statistic"],
        oldest["Threshold"],
        oldest["TreatMissingData"],
    ) == (
        "AWS/SQS",
        "ApproximateAgeOfOldestMessage",
        [{"Name": "QueueName", "Value": "backup-events"}],
        "Maximum",
        3600.0,  # alarms.oldest_message_minutes: 60
        "notBreaching",  # SQS sends nothing for an empty, idle queue
    )
    silent = alarms["backup-agent-i-0test-not-reporting"]
    assert (
        silent["MetricName"],
        silent["Statistic"],
        silent["ComparisonOperator"],
        silent["Threshold"],
        silent["TreatMissingData"],
    ) == ("SecondsSinceLastBackup", "SampleCount", "LessThanThreshold", 1.0, "breaching")
    forecast = alarms["backup-agent-i-0test-days-until-full"]
    assert (
        forecast["MetricName"],
        forecast["Statistic"],
        forecast["ComparisonOperator"],
        forecast["Threshold"],
        forecast["TreatMissingData"],
    ) == ("DaysUntilFull", "Minimum", "LessThanThreshold", 7.0, "notBreaching")
    fleet = alarms["backup-agent-fleet-backup-events-heartbeat-missing"]  # one per queue
    assert (fleet["MetricName"], fleet["Dimensions"], fleet["TreatMissingData"]) == (
        "FleetMembersMissing",
        [{"Name": "Fleet", "Value": "backup-events"}],
        "breaching",  # no member reporting at all: the whole fleet is gone
    )
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [arn] and alarm["OKActions"] == [arn]

    again = Alarms(cloudwatch, config, DIMS).apply()
    assert [c.action for c in again] == ["unchanged"] * 8

    stricter = make_config(backup_root, alerts={"sns_topic_arn": arn, "disk_used_percent": 70})
    changed = {c.name: c.action for c in Alarms(cloudwatch, stricter, DIMS).apply()}
    assert changed["backup-agent-i-0test-disk-space"] == "updated"
    described = cloudwatch.describe_alarms(AlarmNames=["backup-agent-i-0test-disk-space"])
    assert described["MetricAlarms"][0]["Threshold"] == 70.0

    sooner = make_config(backup_root, alerts={"sns_topic_arn": arn, "days_until_full": 14})
    changed = {c.name: c.action for c in Alarms(cloudwatch, sooner, DIMS).apply()}
    assert changed["backup-agent-i-0test-days-until-full"] == "updated"
    again = {c.name: c.action for c in Alarms(cloudwatch, sooner, DIMS).apply()}
    assert set(again.values()) == {"unchanged"}


def test_a_quiet_bucket_does_not_page_unless_backups_are_expected(aws, backup_root, topic):
    """By default no alarm watches the time since the last backup: a bucket nobody writes to
    is not a fault. A stuck backlog (oldest message) and a silent agent (not reporting) are
    watched instead; `alarms.no_backup_hours` opts in for buckets expected to change."""
    arn, _ = topic
    cloudwatch = aws.session.client("cloudwatch")
    quiet = alerting_config(backup_root, arn)
    names = [c.name for c in Alarms(cloudwatch, quiet, DIMS).apply()]
    assert "backup-agent-i-0test-no-backup" not in names
    assert {
        "backup-agent-backup-events-oldest-message",
        "backup-agent-i-0test-not-reporting",
    } <= set(names)
    described = cloudwatch.describe_alarms(AlarmNames=["backup-agent-i-0test-no-backup"])
    assert described["MetricAlarms"] == []

    busy = alerting_config(
        backup_root, arn, alarms={"no_backup_hours": 2, "oldest_message_minutes": 15}
    )
    changes = {c.name: c.action for c in Alarms(cloudwatch, busy, DIMS).apply()}
    assert changes["backup-agent-i-0test-no-backup"] == "created"
    assert changes["backup-agent-backup-events-oldest-message"] == "updated"
    assert {
        action
        for name, action in changes.items()
        if "no-backup" not in name and "oldest" not in name
    } == {"unchanged"}
    (no_backup,) = cloudwatch.describe_alarms(AlarmNames=["backup-agent-i-0test-no-backup"])[
        "MetricAlarms"
    ]
    assert (no_backup["Threshold"], no_backup["TreatMissingData"]) == (7200.0, "breaching")
    (oldest,) = cloudwatch.describe_alarms(
        AlarmNames=["backup-agent-backup-events-oldest-message"]
    )["MetricAlarms"]
    assert oldest["Threshold"] == 900.0


def test_alarms_dry_run_creates_nothing(aws, backup_root, topic):
    config = alerting_config(backup_root, topic[0])
    cloudwatch = aws.session.client("cloudwatch")
    changes = Alarms(cloudwatch, config, DIMS).apply(dry_run=True)
    assert {c.action for c in changes} == {"would be created"}
    assert cloudwatch.describe_alarms()["MetricAlarms"] == []


def test_alarms_need_a_topic(aws, config):
    with pytest.raises(ConfigError, match="sns_topic_arn"):
        Alarms(aws.session.client("cloudwatch"), config, DIMS)


def test_dashboard_has_one_row_per_instance_and_is_idempotent(aws, config):
    cloudwatch = aws.session.client("cloudwatch")
    other = {"InstanceId": "i-0other", "Volume": "/mnt/backups"}
    CloudWatchPublisher(cloudwatch, "BackupAgent", other).add(
        Sampler(Stats(), Path("/"), disk=usage_87).sample()
    )
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", other)
    publisher.add(Sampler(Stats(), Path("/"), disk=usage_87).sample())
    publisher.flush()

    board = Dashboard(cloudwatch, config)
    assert board.apply(DIMS) == "created"
    body = json.loads(cloudwatch.get_dashboard(DashboardName="backup-agent")["DashboardBody"])
    headers = [w["properties"]["markdown"] for w in body["widgets"] if w["type"] == "text"]
    assert headers == ["### i-0other /mnt/backups", "### i-0test /mnt/backups"]
    flat = json.dumps(body)
    for name in (
        "DiskUsedPercent",
        "DiskFreeBytes",
        "BackupsSucceeded",
        "BackupsFailed",
        "BytesBackedUp",
        "BackupLagSeconds",
        "SecondsSinceLastBackup",
        "ApproximateNumberOfMessagesVisible",
        "FleetMembersMissing",
        "backup-events-dlq",
        "ApproximateAgeOfOldestMessage",
    ):
        assert name in flat
    assert board.apply(DIMS) == "unchanged"


def test_cli_alarms_and_dashboard_commands(aws, backup_root, topic, tmp_path, capsys, monkeypatch):
    import yaml

    config = alerting_config(backup_root, topic[0], metrics={"instance_id": "i-0cli"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))
    monkeypatch.setattr("agent.aws.build_clients", lambda c: aws)
    monkeypatch.setattr("agent.logs.configure", lambda *a, **k: None)  # keep pytest's capture
    assert cli.main(["alarms", "--config", str(path), "--dry-run"]) == 0
    assert "would be created" in capsys.readouterr().out
    assert cli.main(["alarms", "--config", str(path)]) == 0
    assert capsys.readouterr().out.count("created") == 7  # six of the instance, one of the fleet
    assert cli.main(["dashboard", "--config", str(path)]) == 0
    assert "created" in capsys.readouterr().out
    cloudwatch = aws.session.client("cloudwatch")
    assert (
        len(cloudwatch.describe_alarms(AlarmNamePrefix="backup-agent-i-0cli")["MetricAlarms"]) == 4
    )
    assert "i-0cli" in cloudwatch.get_dashboard(DashboardName="backup-agent")["DashboardBody"]


# -- alerts ----------------------------------------------------------------------------------


def test_dashboard_dry_run_prints_the_body_without_calling_aws(
    backup_root, topic, tmp_path, capsys, monkeypatch
):
    import yaml

    config = alerting_config(backup_root, topic[0], metrics={"instance_id": "i-0dry"})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(json.loads(config.model_dump_json())))

    def no_aws(_config):
        raise AssertionError("dashboard --dry-run called AWS")

    monkeypatch.setattr("agent.aws.build_clients", no_aws)
    monkeypatch.setattr("agent.cli.agent.build_clients", no_aws)
    monkeypatch.setattr("agent.logs.configure", lambda *a, **k: None)
    assert cli.main(["dashboard", "--config", str(path), "--dry-run"]) == 0
    body = json.loads(capsys.readouterr().out)  # the whole output is the JSON body
    headers = [w["properties"]["markdown"] for w in body["widgets"] if w["type"] == "text"]
    assert headers == [f"### i-0dry {backup_root}"]
    assert "ApproximateNumberOfMessagesVisible" in json.dumps(body)


def test_an_sns_alert_arrives_in_a_subscribed_queue(aws, topic):
    arn, inbox = topic
    dispatcher = AlertDispatcher(
        [SnsChannel(aws.session.client("sns"), arn)], context={"InstanceId": "i-0test"}
    )
    dispatcher.start()
    dispatcher.submit(backup_gave_up("m-1", ["reports/q1.pdf: AccessDenied"]))
    dispatcher.stop()
    (message,) = inbox_messages(aws, inbox)
    assert message["Subject"] == "[backup-agent] Backup failed for good on i-0test"
    assert "reports/q1.pdf: AccessDenied" in message["Message"]
    assert message["MessageAttributes"]["kind"]["Value"] == "backup_failed"


def test_an_email_alert_has_text_and_html_bodies(aws):
    ses = aws.session.client("ses")
    ses.verify_email_identity(EmailAddress=SENDER)
    requests = []
    ses.meta.events.register(
        "provide-client-params.ses.SendEmail", lambda params, **_: requests.append(params)
    )
    dispatcher = AlertDispatcher([EmailChannel(ses, SENDER, [OPS])], context={"host": "web-1"})
    dispatcher.submit(backup_gave_up("m-2", ["a.txt: <AccessDenied>"]))
    dispatcher.stop()
    (email,) = sent_emails()  # moto keeps the HTML body when both are sent
    assert email.source == SENDER and email.destinations["ToAddresses"] == [OPS]
    assert email.subject == "[backup-agent] Backup failed for good on web-1"
    assert "a.txt: &lt;AccessDenied&gt;" in email.body and "<html>" in email.body
    (request,) = requests
    assert "a.txt: <AccessDenied>" in request["Message"]["Body"]["Text"]["Data"]


def test_a_storm_of_failures_sends_a_few_alerts_with_counts(aws, topic):
    arn, inbox = topic
    dispatcher = AlertDispatcher([SnsChannel(aws.session.client("sns"), arn)], max_examples=3)
    dispatcher.start()
    for n in range(10_000):
        dispatcher.submit(backup_gave_up(f"m-{n}", [f"key-{n}: AccessDenied"]))
    dispatcher.stop()
    messages = inbox_messages(aws, inbox)
    assert len(messages) == 2
    first, summary = messages
    assert "key-0: AccessDenied" in first["Message"]
    assert summary["MessageAttributes"]["count"]["Value"] == "9999"
    assert "9999 more alert(s)" in summary["Message"]
    assert summary["Message"].count("AccessDenied") == 3
    assert dispatcher.suppressed() == {"backup_failed": 9_999}


def test_a_rejected_configuration_is_reported_once_per_hour(aws, topic, tmp_path):
    arn, inbox = topic
    path = tmp_path / "config.yaml"
    path.write_text(
        json.dumps(
            {
                "aws": {"region": REGION},
                "alerts": {"sns_topic_arn": arn},
                "queue": {"url": "not a url"},
            }
        )
    )
    problems = ["queue.url: 'not a url' is not a queue URL"]
    clock = [1000.0]
    kwargs = {"clients": aws, "state_dir": tmp_path, "clock": lambda: clock[0]}
    assert report_rejected_config(path, problems, **kwargs) is True
    assert report_rejected_config(path, problems, **kwargs) is False  # a restart loop
    clock[0] += 3601
    assert report_rejected_config(path, problems, **kwargs) is True
    messages = inbox_messages(aws, inbox)
    assert len(messages) == 2
    assert messages[0]["MessageAttributes"]["kind"]["Value"] == AlertKind.CONFIG_REJECTED.value
    assert "not a queue URL" in messages[0]["Message"]


def test_bootstrap_creates_the_alert_topic_once(aws, backup_root):
    from agent.operations.bootstrap import Bootstrap

    arn = "arn:aws:sns:us-east-1:123456789012:backup-alerts"
    config = make_config(backup_root, alerts={"sns_topic_arn": arn})
    first = Bootstrap(config, aws).run()
    again = Bootstrap(config, aws).run()
    assert f"topic {arn}" in first.created and f"topic {arn}" in again.existing
    topics = aws.session.client("sns").list_topics()["Topics"]
    assert topics == [{"TopicArn": arn}]


def test_the_daily_digest_is_an_email_with_the_days_figures(aws, backup_root, topic):
    from agent.monitoring.monitor import Monitoring

    ses = aws.session.client("ses")
    ses.verify_email_identity(EmailAddress=SENDER)
    config = make_config(
        backup_root,
        alerts={
            "sns_topic_arn": topic[0],
            "digest": True,
            "email": {"sender": SENDER, "recipients": [OPS]},
        },
        metrics={"instance_id": "i-0digest", "prometheus": None},
    )
    stats = Stats()
    monitoring = Monitoring(config, aws, stats, disk=usage_87)
    assert monitoring.jobs.record("digest").schedule.cron == "0 8 * * *"
    stats.record_success("stored", 5000, 1000, 1.0)
    stats.record_failure("RetryableError")
    assert monitoring.jobs.run_now("digest")
    monitoring.alerts.stop()
    (email,) = sent_emails()
    assert email.subject == "[backup-agent] Daily backup digest on i-0digest"
    assert "1 backups, 5000 bytes, 1 failed attempts" in email.body
    assert "<th>free_bytes</th><td>130</td>" in email.body
    assert inbox_messages(aws, topic[1]) == []  # the digest is not an SNS alert


def test_backups_per_category_reach_cloudwatch_with_a_category_dimension(aws):
    cloudwatch = aws.session.client("cloudwatch")
    stats = Stats()
    sampler = Sampler(stats, Path("/mnt/backups"), disk=usage_87)
    for name in ("finance", "finance", "images"):
        stats.record_category(name)
    publisher = CloudWatchPublisher(cloudwatch, "BackupAgent", DIMS)
    publisher.add(sampler.sample())
    stats.record_category("finance")
    publisher.add(sampler.sample())  # the next sample carries only what came since
    assert publisher.flush() > 0

    now = datetime.now(UTC)

    def total(category: str) -> float:
        dimensions = [*({"Name": k, "Value": v} for k, v in DIMS.items())]
        points = cloudwatch.get_metric_statistics(
            Namespace="BackupAgent",
            MetricName="BackupsByCategory",
            Dimensions=[*dimensions, {"Name": "Category", "Value": category}],
            StartTime=now - timedelta(minutes=5),
            EndTime=now + timedelta(minutes=5),
            Period=60,
            Statistics=["Sum"],
        )["Datapoints"]
        return sum(p["Sum"] for p in points)

    assert (total("finance"), total("images"), total("legal")) == (3, 1, 0)
