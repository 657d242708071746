"""scripts/bootstrap-aws (moto): creates what is missing, leaves what exists, runs twice."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from agent.aws import Clients
from agent.cli import bootstrap as bootstrap_cli
from agent.operations.bootstrap import NOTIFICATION_ID, NOTIFIED_EVENTS, Bootstrap
from agent.restore.job import EXPIRES_AT
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE, make_config, mocked_aws
from tests.support.aws_hooks import CallLog, record_calls
from tests.support.backed_up import write_config


@pytest.fixture
def clients() -> Iterator[Clients]:
    with mocked_aws() as clients:
        yield clients


@pytest.fixture
def config(backup_root):
    return make_config(
        backup_root, queue={"url": QUEUE_URL, "max_receive_count": 5, "visibility_timeout": 120}
    )


def queue_attributes(clients: Clients, url: str) -> dict[str, str]:
    return dict(
        clients.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    )


def test_a_first_run_creates_everything(clients, config):
    report = Bootstrap(config, clients).run(create_buckets=True)
    assert report.existing == []
    assert sorted(report.created) == sorted(
        [
            f"bucket {BUCKET}",
            "queue backup-events-dlq",
            "queue backup-events",
            "queue policy for S3",
            f"notification {BUCKET} → queue",
            f"table {TABLE}",
            f"time to live {TABLE}.expires_at",
        ]
    )


def test_the_queue_redrives_to_the_dead_letter_queue(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    dlq_url = clients.sqs.get_queue_url(QueueName=config.queue.dead_letter_name)["QueueUrl"]
    dlq_arn = queue_attributes(clients, dlq_url)["QueueArn"]
    attributes = queue_attributes(clients, QUEUE_URL)
    redrive = json.loads(attributes["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"] == dlq_arn
    assert int(redrive["maxReceiveCount"]) == 5 >= 3
    assert attributes["VisibilityTimeout"] == "120"


def test_the_queue_policy_lets_only_the_configured_buckets_send(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    attributes = queue_attributes(clients, QUEUE_URL)
    (statement,) = json.loads(attributes["Policy"])["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == attributes["QueueArn"]
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"] == [f"arn:aws:s3:::{BUCKET}"]


def test_the_bucket_notifies_created_removed_expired_and_restored_objects(clients, config):
    # S3 Lifecycle deletes are reported only as s3:LifecycleExpiration:* ("ObjectRemoved ...
    # event notifications don't alert you for automatic deletes from Lifecycle policies"), and
    # s3:ObjectRestore:Completed says an archived object is readable again:
    # https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-how-to-event-types-and-destinations.html
    Bootstrap(config, clients).run(create_buckets=True)
    notification = clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)
    (queue,) = notification["QueueConfigurations"]
    assert queue["Id"] == NOTIFICATION_ID
    assert queue["QueueArn"] == queue_attributes(clients, QUEUE_URL)["QueueArn"]
    assert sorted(queue["Events"]) == [
        "s3:LifecycleExpiration:*",
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
        "s3:ObjectRestore:Completed",
    ]


def old_release_notification(clients: Clients, events: list[str], **extra) -> str:
    """The bucket as an earlier bootstrap left it: our queue notified of fewer event types."""
    clients.s3.create_bucket(Bucket=BUCKET)
    queue_arn = queue_attributes(
        clients, clients.sqs.create_queue(QueueName="backup-events")["QueueUrl"]
    )["QueueArn"]
    configuration = {"Id": NOTIFICATION_ID, "QueueArn": queue_arn, "Events": events, **extra}
    clients.s3.put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={"QueueConfigurations": [configuration]}
    )
    return queue_arn


def test_a_notification_with_the_old_event_list_is_updated_once(clients, config):
    queue_arn = old_release_notification(clients, ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"])

    report = Bootstrap(config, clients).run(create_buckets=True)

    assert (
        f"notification {BUCKET} → queue"
        " (added s3:LifecycleExpiration:*, s3:ObjectRestore:Completed)" in report.created
    )
    (queue,) = clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)[
        "QueueConfigurations"
    ]
    assert (queue["Id"], queue["QueueArn"]) == (NOTIFICATION_ID, queue_arn)
    assert sorted(queue["Events"]) == sorted(NOTIFIED_EVENTS)
    again = Bootstrap(config, clients).run(create_buckets=True)
    assert f"notification {BUCKET} → queue" in again.existing  # idempotent


def test_an_update_keeps_the_configurations_filter_and_wider_event_types(clients, config):
    # "prefix" in lower case: S3's documented value, and the only one moto accepts
    prefix_only = {"Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "data/"}]}}}
    old_release_notification(
        clients, ["s3:ObjectCreated:*", "s3:ObjectRemoved:*", "s3:ObjectRestore:*"], **prefix_only
    )

    report = Bootstrap(config, clients).run(create_buckets=True)

    assert f"notification {BUCKET} → queue (added s3:LifecycleExpiration:*)" in report.created
    (queue,) = clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)[
        "QueueConfigurations"
    ]
    (rule,) = queue["Filter"]["Key"]["FilterRules"]
    assert (rule["Name"].lower(), rule["Value"]) == ("prefix", "data/")
    # s3:ObjectRestore:* already includes s3:ObjectRestore:Completed: not added twice
    assert sorted(queue["Events"]) == [
        "s3:LifecycleExpiration:*",
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
        "s3:ObjectRestore:*",
    ]


def test_the_table_has_its_key_index(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    table = clients.dynamodb.describe_table(TableName=TABLE)["Table"]
    assert [k["AttributeName"] for k in table["KeySchema"]] == ["pk", "sk"]
    (index,) = table["GlobalSecondaryIndexes"]
    assert index["IndexName"] == "by-key"
    assert [k["AttributeName"] for k in index["KeySchema"]] == ["gsi_bucket", "gsi_key"]


def test_a_second_run_creates_nothing(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    clients.sqs.purge_queue(QueueUrl=QUEUE_URL)
    report = Bootstrap(config, clients).run(create_buckets=True)
    assert report.created == []
    assert len(report.existing) == 7
    messages = clients.sqs.receive_message(QueueUrl=QUEUE_URL, WaitTimeSeconds=0).get(
        "Messages", []
    )
    assert messages == []  # the notification was not set again (that sends an s3:TestEvent)


def test_existing_notifications_of_the_bucket_are_kept(clients, config):
    clients.s3.create_bucket(Bucket=BUCKET)
    other = clients.sqs.create_queue(QueueName="analytics")["QueueUrl"]
    other_arn = queue_attributes(clients, other)["QueueArn"]
    clients.s3.put_bucket_notification_configuration(
        Bucket=BUCKET,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"Id": "analytics", "QueueArn": other_arn, "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    Bootstrap(config, clients).run(create_buckets=True)
    notification = clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert sorted(q["Id"] for q in notification["QueueConfigurations"]) == [
        "analytics",
        NOTIFICATION_ID,
    ]


def test_other_statements_of_the_queue_policy_are_kept(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    operator_statement = {
        "Sid": "OperatorAudit",
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:role/audit"},
        "Action": "sqs:GetQueueAttributes",
        "Resource": queue_attributes(clients, QUEUE_URL)["QueueArn"],
    }
    operator_policy = {"Version": "2012-10-17", "Statement": [operator_statement]}
    clients.sqs.set_queue_attributes(
        QueueUrl=QUEUE_URL, Attributes={"Policy": json.dumps(operator_policy)}
    )

    report = Bootstrap(config, clients).run(create_buckets=True)

    assert report.created == ["queue policy for S3"]
    statements = json.loads(queue_attributes(clients, QUEUE_URL)["Policy"])["Statement"]
    assert statements[0] == operator_statement
    assert [s["Sid"] for s in statements] == ["OperatorAudit", "AllowS3Notifications"]


def test_a_changed_setting_is_applied_to_an_existing_queue(clients, config, backup_root):
    Bootstrap(config, clients).run(create_buckets=True)
    changed = make_config(
        backup_root, queue={"url": QUEUE_URL, "max_receive_count": 7, "visibility_timeout": 120}
    )
    Bootstrap(changed, clients).run(create_buckets=True)
    redrive = json.loads(queue_attributes(clients, QUEUE_URL)["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 7
    assert "Policy" in queue_attributes(clients, QUEUE_URL)  # S3 may still send


# -- --dry-run: reads only ------------------------------------------------------------------

READS = ("Get", "List", "Head", "Describe")


def _recorded(clients: Clients) -> CallLog:
    log = CallLog()
    for client in (clients.s3, clients.sqs, clients.dynamodb):
        record_calls(client, log)
    return log


def test_a_dry_run_on_an_empty_account_lists_everything_and_creates_nothing(clients, config):
    calls = _recorded(clients)
    report = Bootstrap(config, clients, dry_run=True).run(create_buckets=True)

    assert report.dry_run and report.existing == []
    assert sorted(report.created) == sorted(
        [
            f"bucket {BUCKET}",
            "queue backup-events-dlq",
            "queue backup-events",
            "queue policy for S3",
            f"notification {BUCKET} → queue",
            f"table {TABLE}",
            f"time to live {TABLE}.expires_at",
        ]
    )
    assert [op for op in calls.operations() if not op.startswith(READS)] == []
    assert clients.s3.list_buckets()["Buckets"] == []
    assert clients.sqs.list_queues().get("QueueUrls", []) == []
    assert clients.dynamodb.list_tables()["TableNames"] == []


def test_a_dry_run_after_a_real_run_finds_everything_there(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    report = Bootstrap(config, clients, dry_run=True).run(create_buckets=True)
    assert report.created == [] and len(report.existing) == 7


def test_a_dry_run_names_a_changed_setting_and_leaves_it(clients, config, backup_root):
    Bootstrap(config, clients).run(create_buckets=True)
    changed = make_config(
        backup_root, queue={"url": QUEUE_URL, "max_receive_count": 7, "visibility_timeout": 120}
    )
    calls = _recorded(clients)
    report = Bootstrap(changed, clients, dry_run=True).run(create_buckets=True)
    assert report.created == ["queue backup-events attributes (RedrivePolicy)"]
    assert [op for op in calls.operations() if not op.startswith(READS)] == []
    redrive = json.loads(queue_attributes(clients, QUEUE_URL)["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 5


def test_the_cli_dry_run_prints_the_plan_and_creates_nothing(tmp_path, backup_root, capsys):
    path = write_config(tmp_path / "config.yaml", backup_root)
    with mock_aws():
        assert bootstrap_cli.main(["--config", str(path), "--dry-run", "--create-buckets"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert "would create queue backup-events" in out
        assert out[-1] == "dry run: nothing created or changed"
        session = boto3.session.Session(region_name=REGION)
        assert session.client("sqs").list_queues().get("QueueUrls", []) == []

        argv = ["--json", "--config", str(path), "--dry-run", "--create-buckets"]
        assert bootstrap_cli.main(argv) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["dry_run"] is True and "queue backup-events" in document["created"]
        assert session.client("dynamodb").list_tables()["TableNames"] == []

        # without --create-buckets, a missing bucket is one line naming it, not a traceback
        assert bootstrap_cli.main(["--config", str(path), "--dry-run"]) == 2
        assert capsys.readouterr().err.splitlines()[1] == (
            f"  buckets: {BUCKET}: no such bucket (create it, or run with --create-buckets)"
        )


def test_time_to_live_is_enabled_on_expires_at_once(clients, config):
    """Restore-job items carry `expires_at` (agent/restore/job.py). AWS refuses a second
    UpdateTimeToLive within the hour (moto does not): a run that finds it on asks nothing."""
    Bootstrap(config, clients).run(create_buckets=True)
    ttl = clients.dynamodb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": EXPIRES_AT}

    calls = _recorded(clients)
    again = Bootstrap(config, clients).run()

    assert f"time to live {TABLE}.{EXPIRES_AT}" in again.existing
    assert "UpdateTimeToLive" not in calls.operations()
    assert "DescribeTimeToLive" in calls.operations()


def test_a_time_to_live_on_another_attribute_is_left_alone_and_said(clients, config):
    Bootstrap(config, clients).run(create_buckets=True)
    clients.dynamodb.update_time_to_live(
        TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "gone_at"}
    )

    report = Bootstrap(config, clients).run()

    ttl = clients.dynamodb.describe_time_to_live(TableName=TABLE)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "gone_at"
    [said] = [line for line in report.existing if line.startswith("time to live")]
    assert "enabled on gone_at" in said and "restore-job items stay" in said
