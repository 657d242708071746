"""`fleet.replicas: 2` (moto): S3 -> SNS topic -> one queue per replica group -> every
version on exactly two volumes, one per group (docs/fleet.md "Replicas").

Bootstrap creates the fan-out (topic and its policy, a queue and dead-letter queue per
group, the queue policies, raw-delivery subscriptions, the bucket notifying the topic); an
event published to the topic reaches every group's queue; one daemon per group backs up
every version, and the ledger names both holders; a duplicate within a group copies
nothing twice.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from agent.aws import Clients
from agent.cli.agent import main as agent_main
from agent.cli.common import StatusCode
from agent.cli.restore import main as restore_main
from agent.config import Config
from agent.fleet.heartbeat import Heartbeat, Identity
from agent.fleet.registry import Registry
from agent.operations.bootstrap import NOTIFICATION_ID, NOTIFIED_EVENTS, Bootstrap
from agent.operations.iam import granted_actions, policy_document
from agent.operations.online_check import check_online
from agent.pipeline import delivery
from agent.pipeline.backup import Outcome
from agent.runtime.daemon import Daemon
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, REGION, TABLE, make_config, mocked_aws, queue_counts
from tests.support.backed_up import write_config
from tests.support.events import notification, s3_record
from tests.support.fleet import member_service, member_volume
from tests.support.iam import Call, Recorder, checks, matching_statements
from tests.support.lifecycle import created, enable_versioning, put
from tests.support.waiting import wait_until

ACCOUNT = "123456789012"
BASE = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/backup-events"
GROUPS = ["backup-events-1", "backup-events-2"]
TOPIC_ARN = f"arn:aws:sns:{REGION}:{ACCOUNT}:backup-events-fanout"
AT = datetime(2026, 12, 1, 6, tzinfo=UTC)


def group_config(root: Path, group: int, **overrides: Any) -> Config:
    return make_config(
        root,
        queue={"url": f"{BASE}-{group}", "wait_time_seconds": 0, "retry_base_seconds": 1},
        fleet={"replicas": 2},
        **overrides,
    )


@pytest.fixture
def clients() -> Iterator[Clients]:
    with mocked_aws() as clients:
        yield clients


def _url(clients: Clients, name: str) -> str:
    return clients.sqs.get_queue_url(QueueName=name)["QueueUrl"]


def _purge(clients: Clients) -> None:
    """Setting a notification sends s3:TestEvent (moto too): start from empty queues."""
    for name in GROUPS:
        clients.sqs.purge_queue(QueueUrl=_url(clients, name))


def test_bootstrap_with_two_replicas_creates_the_fan_out_and_runs_twice(clients, tmp_path):
    config = group_config(tmp_path, 1)

    report = Bootstrap(config, clients).run(create_buckets=True)

    assert sorted(report.created) == sorted(
        [
            f"bucket {BUCKET}",
            "topic backup-events-fanout",
            "topic policy for S3 (backup-events-fanout)",
            *[
                line
                for name in GROUPS
                for line in (
                    f"queue {name}-dlq",
                    f"queue {name}",
                    f"queue policy for the topic ({name})",
                    f"subscription {name} → topic (raw delivery)",
                )
            ],
            f"notification {BUCKET} → topic",
            f"table {TABLE}",
            f"time to live {TABLE}.expires_at",
        ]
    )
    again = Bootstrap(group_config(tmp_path, 2), clients).run()  # from the other group: same
    assert again.created == []

    sns = clients.sns()
    policy = json.loads(sns.get_topic_attributes(TopicArn=TOPIC_ARN)["Attributes"]["Policy"])
    [s3_may_publish] = [s for s in policy["Statement"] if s.get("Sid") == "AllowS3Publish"]
    assert s3_may_publish["Principal"] == {"Service": "s3.amazonaws.com"}
    assert s3_may_publish["Condition"] == {
        "ArnLike": {"aws:SourceArn": [f"arn:aws:s3:::{BUCKET}"]},
        "StringEquals": {"aws:SourceAccount": ACCOUNT},
    }
    subscriptions = sns.list_subscriptions_by_topic(TopicArn=TOPIC_ARN)["Subscriptions"]
    assert sorted(s["Endpoint"].rsplit(":", 1)[-1] for s in subscriptions) == GROUPS
    for subscription in subscriptions:
        attributes = sns.get_subscription_attributes(
            SubscriptionArn=subscription["SubscriptionArn"]
        )["Attributes"]
        assert attributes["RawMessageDelivery"] == "true"
    for name in GROUPS:
        attributes = clients.sqs.get_queue_attributes(
            QueueUrl=_url(clients, name), AttributeNames=["All"]
        )["Attributes"]
        redrive = json.loads(attributes["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(f":{name}-dlq")
        [topic_may_send] = json.loads(attributes["Policy"])["Statement"]
        assert topic_may_send["Principal"] == {"Service": "sns.amazonaws.com"}
        assert topic_may_send["Condition"] == {"ArnEquals": {"aws:SourceArn": TOPIC_ARN}}
    notified = clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert notified.get("QueueConfigurations", []) == []
    [topic] = notified["TopicConfigurations"]
    assert topic["Id"] == NOTIFICATION_ID and topic["TopicArn"] == TOPIC_ARN
    assert sorted(topic["Events"]) == sorted(NOTIFIED_EVENTS)


def test_going_from_one_to_two_replicas_replaces_the_queue_notification(clients, tmp_path):
    one = make_config(tmp_path, queue={"url": BASE})
    Bootstrap(one, clients).run(create_buckets=True)
    assert clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)["QueueConfigurations"]

    report = Bootstrap(group_config(tmp_path, 1), clients).run()

    assert f"notification {BUCKET} → topic (in place of the queue)" in report.created
    notified = clients.s3.get_bucket_notification_configuration(Bucket=BUCKET)
    assert notified.get("QueueConfigurations", []) == []
    assert [t["TopicArn"] for t in notified["TopicConfigurations"]] == [TOPIC_ARN]


def test_a_dry_run_creates_nothing_and_lists_the_fan_out(clients, tmp_path):
    clients.s3.create_bucket(Bucket=BUCKET)
    report = Bootstrap(group_config(tmp_path, 2), clients, dry_run=True).run()
    assert "topic backup-events-fanout" in report.created
    assert "subscription backup-events-2 → topic (raw delivery)" in report.created
    assert clients.sns().list_topics()["Topics"] == []
    assert clients.sqs.list_queues().get("QueueUrls", []) == []


def test_an_event_published_to_the_topic_reaches_every_groups_queue_as_sent(clients, tmp_path):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    _purge(clients)
    body = notification(s3_record("docs/a.txt", bucket=BUCKET, size=3, versionId="v-1"))

    clients.sns().publish(TopicArn=TOPIC_ARN, Message=body)

    for name in GROUPS:
        [message] = clients.sqs.receive_message(QueueUrl=_url(clients, name))["Messages"]
        assert message["Body"] == body  # raw delivery: S3's notification, no SNS envelope


def test_an_object_put_reaches_both_groups_through_the_topic_in_moto(clients, tmp_path):
    """moto delivers S3's notifications to an SNS topic (and on to its subscriptions):
    the whole chain runs here, without a hand-made publish."""
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    _purge(clients)

    clients.s3.put_object(Bucket=BUCKET, Key="docs/a.txt", Body=b"abc")

    for name in GROUPS:
        [message] = clients.sqs.receive_message(QueueUrl=_url(clients, name))["Messages"]
        [record] = json.loads(message["Body"])["Records"]
        assert record["eventName"] == "ObjectCreated:Put"


def test_one_daemon_per_group_puts_every_version_on_exactly_two_volumes(clients, tmp_path):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    enable_versioning(clients)
    # moto's own events carry no versionId: publish the events real S3 would send
    clients.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    _purge(clients)
    versions = {}
    for n in range(12):
        key = f"docs/file-{n:02d}.txt"
        versions[key] = put(clients, key, f"content {n}".encode())["VersionId"]
    sns = clients.sns()
    for n, (key, version_id) in enumerate(versions.items()):
        record = s3_record(
            key, bucket=BUCKET, size=len(f"content {n}"), versionId=version_id,
            sequencer=f"{n + 1:016X}",
        )  # fmt: skip
        sns.publish(TopicArn=TOPIC_ARN, Message=notification(record))
    volumes = [member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-b")]
    daemons = [
        Daemon(
            group_config(
                volume.root,
                group,
                metrics={"prometheus": None, "cloudwatch": False, "instance_id": f"i-{group}"},
            ),
            clients,
        )
        for group, volume in zip((1, 2), volumes, strict=True)
    ]
    ledger = Ledger(clients.dynamodb, TABLE)

    def every_version_held_twice() -> bool:
        for key in versions:
            recorded = ledger.versions(BUCKET, key)
            if len(recorded) != 1 or recorded[0].holders is None or len(recorded[0].holders) < 2:
                return False
        return True

    try:
        for daemon, volume in zip(daemons, volumes, strict=True):
            daemon.start(volume.read_marker())
        wait_until(every_version_held_twice, timeout=60, what="every version held twice")
        for name in GROUPS:
            wait_until(
                lambda name=name: queue_counts(clients.sqs, _url(clients, name)) == (0, 0),
                timeout=30,
                what=f"{name} drained",
            )
    finally:
        for daemon in daemons:
            daemon.stop()

    for volume in volumes:
        journal = list(Journal(volume.journal_dir).read_all())
        assert sorted((r.key, r.version_id) for r in journal) == sorted(versions.items())
        assert all(volume.has_copy(r.sha256 or "") for r in journal)
    for key in versions:
        [record] = ledger.versions(BUCKET, key)
        assert record.holders == {"backup-events-1": "vol-a", "backup-events-2": "vol-b"}
        assert sorted(record.holder_volumes()) == ["vol-a", "vol-b"]


def test_a_duplicate_in_one_group_copies_nothing_twice(clients, tmp_path):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    enable_versioning(clients)
    a, c, b = (member_volume(tmp_path, n) for n in ("vol-a", "vol-c", "vol-b"))
    group_1_a = member_service(clients, a, group=GROUPS[0])
    group_1_c = member_service(clients, c, group=GROUPS[0])
    group_2_b = member_service(clients, b, group=GROUPS[1])
    response = put(clients, "report.pdf", b"quarterly figures")
    event = created("report.pdf", response, 17, at=AT)

    assert group_1_a.process(event).outcome == Outcome.STORED
    # a was killed before its DeleteMessage: group 1's message comes back, to c
    with delivery.delivering(delivery.Delivery("m-1", receive_count=2)):
        again = group_1_c.process(event)
    # group 2's own message: b copies the version for its group
    with delivery.delivering(delivery.Delivery("m-2", receive_count=1)):
        second = group_2_b.process(event)
    # and a redelivery in group 2 finds b's copy
    with delivery.delivering(delivery.Delivery("m-2", receive_count=2)):
        third = group_2_b.process(event)

    assert again.outcome == Outcome.ALREADY_DONE
    assert list(Journal(c.journal_dir).read_all()) == []
    assert not list(c.objects_dir.rglob("*.zst"))
    assert second.outcome == Outcome.STORED
    assert third.outcome == Outcome.ALREADY_DONE
    assert len(list(Journal(b.journal_dir).read_all())) == 1
    recorded = Ledger(clients.dynamodb, TABLE).get_version(
        BUCKET, "report.pdf", event.version_token
    )
    assert recorded is not None
    assert recorded.holders == {GROUPS[0]: "vol-a", GROUPS[1]: "vol-b"}
    assert recorded.volume_id == "vol-a"


def test_a_duplicate_two_members_of_one_group_took_at_once_is_held_once_in_the_group(
    clients, tmp_path
):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    enable_versioning(clients)
    a, c = member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-c")
    members = [member_service(clients, v, group=GROUPS[0]) for v in (a, c)]
    response = put(clients, "report.pdf", b"quarterly figures")
    event = created("report.pdf", response, 17, at=AT)

    assert members[0].process(event).outcome == Outcome.STORED
    with delivery.delivering(delivery.Delivery("m-2", receive_count=1)):
        lost = members[1].process(event)  # S3 sent it twice; c took the copy at first receive

    assert lost.outcome == Outcome.ALREADY_DONE
    assert members[1].stats.lifecycle["fleet_duplicates"] == 1
    recorded = Ledger(clients.dynamodb, TABLE).get_version(
        BUCKET, "report.pdf", event.version_token
    )
    assert recorded is not None and recorded.holders == {GROUPS[0]: "vol-a"}


# -- least privilege ----------------------------------------------------------------------


def test_the_generated_policies_allow_the_fan_out_calls_and_the_holder_write_only(
    clients, tmp_path
):
    """Bootstrap (operator) and a second group's holder write (agent), recorded against
    moto and checked against `iam-policy` for a `replicas: 2` config."""
    config = group_config(tmp_path, 2)
    recorder = Recorder()
    with recorder.installed():
        clients.s3.create_bucket(Bucket=BUCKET)
        with recorder.role("operator"):
            Bootstrap(config, clients).run()
        enable_versioning(clients)
        a, b = member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-b")
        response = put(clients, "report.pdf", b"quarterly figures")
        event = created("report.pdf", response, 17, at=AT)
        for volume, group in ((a, GROUPS[0]), (b, GROUPS[1])):
            with recorder.role("agent"):
                member_service(clients, volume, group=group).process(event)

    policies = {role: policy_document(config, role=role) for role in ("agent", "operator")}
    made = {(c.role, c.operation) for c in recorder.calls}
    assert {("operator", "Subscribe"), ("operator", "SetTopicAttributes")} <= made
    assert ("agent", "UpdateItem") in made
    for call in recorder.calls:
        for check in checks(call):
            assert matching_statements(policies[call.role], check), check
    agent = {s["Sid"]: s for s in policies["agent"]["Statement"]}
    assert "sns:Subscribe" not in granted_actions(policies["agent"])
    holder = Call("agent", "dynamodb", REGION, "UpdateItem", {
        "TableName": TABLE, "Key": {"pk": {}, "sk": {}},
        "UpdateExpression": "SET order_key = :v",
    })  # fmt: skip
    # the holder writes touch the key, holders and volume_id (a release moves it) only
    assert not any(matching_statements(policies["agent"], c) for c in checks(holder))
    assert agent["RecordReplicaHolder"]["Action"] == ["dynamodb:UpdateItem"]
    operator = {s["Sid"]: s for s in policies["operator"]["Statement"]}
    assert operator["BootstrapFanOutTopic"]["Resource"] == [TOPIC_ARN]
    assert sorted(operator["BootstrapQueues"]["Resource"]) == sorted(
        f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}{suffix}"
        for name in GROUPS
        for suffix in ("", "-dlq")
    )


# -- restore knows every holder -------------------------------------------------------------


def test_list_shows_every_holder_and_a_restore_counts_any_holder_as_local(clients, tmp_path):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    enable_versioning(clients)
    a, b, c = (member_volume(tmp_path, n) for n in ("vol-a", "vol-b", "vol-c"))

    both = created("docs/both.txt", put(clients, "docs/both.txt", b"both"), 4, at=AT)
    only_c = created("docs/only-c.txt", put(clients, "docs/only-c.txt", b"only c"), 6, at=AT)
    assert member_service(clients, a, group=GROUPS[0]).process(both).outcome == Outcome.STORED
    assert member_service(clients, b, group=GROUPS[1]).process(both).outcome == Outcome.STORED
    assert member_service(clients, c, group=GROUPS[0]).process(only_c).outcome == Outcome.STORED
    config_path = write_config(
        tmp_path / "config.yaml",
        b.root,
        queue={"url": f"{BASE}-2", "wait_time_seconds": 0},
        fleet={"replicas": 2},
    )

    def restore(command: str, *args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = restore_main([command, "--config", str(config_path), *args], out=out, err=err)
        return code, out.getvalue() + err.getvalue()

    code, lines = restore("list", "--json")
    holders = {row["key"]: row["holders"] for row in map(json.loads, lines.splitlines())}
    # both.txt's LATEST was written by a, before b added its holder: read from the version
    assert code == 0 and holders == {
        "docs/both.txt": ["vol-a", "vol-b"],
        "docs/only-c.txt": ["vol-c"],
    }
    code, table = restore("list")
    assert "vol-a, vol-b" in table

    b.copy_path(both_sha(clients, both)).unlink()  # b's copy lost
    code, out = restore("restore", "--prefix", "docs/", "--to", str(tmp_path / "restored"))

    assert code != 0
    # both.txt is b's (a holder): it fails here, it is not sent elsewhere; only-c.txt is c's
    assert "docs/both.txt" in out.split("held by another volume")[0]
    assert "docs/only-c.txt: version " in out and "volume vol-c" in out


def both_sha(clients: Clients, event: Any) -> str:
    record = Ledger(clients.dynamodb, TABLE).get_version(BUCKET, event.key, event.version_token)
    assert record is not None and record.sha256
    return record.sha256


# -- who needs a person: a group that copies nothing, versions on fewer volumes ------------


def test_status_fleet_lists_every_group_and_flags_one_with_no_live_member(
    clients, tmp_path, capsys
):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    Heartbeat(
        Registry(clients.dynamodb, TABLE, GROUPS[0]),
        lambda: Identity("i-aaaa", "i-aaaa", "vol-a", "us-east-1a", "1.0"),
        interval_seconds=30,
        clock=lambda: datetime.now(UTC),
    ).beat()
    config_path = write_config(
        tmp_path / "config.yaml",
        tmp_path,
        queue={"url": f"{BASE}-1", "wait_time_seconds": 0},
        fleet={"replicas": 2},
    )
    capsys.readouterr()

    code = agent_main(["status", "--config", str(config_path), "--fleet", "--json"])
    report = json.loads(capsys.readouterr().out)

    assert code == StatusCode.DOWN
    assert report["replica_groups"] == {GROUPS[0]: 1, GROUPS[1]: 0}
    assert [(m["member_id"], m["replica_group"]) for m in report["members"]] == [
        ("i-aaaa", GROUPS[0])
    ]
    [problem] = report["problems"]
    assert problem.startswith(f"replica group {GROUPS[1]}: no member with a heartbeat")

    Heartbeat(
        Registry(clients.dynamodb, TABLE, GROUPS[1]),
        lambda: Identity("i-bbbb", "i-bbbb", "vol-b", "us-east-1b", "1.0"),
        interval_seconds=30,
        clock=lambda: datetime.now(UTC),
    ).beat()
    capsys.readouterr()
    assert agent_main(["status", "--config", str(config_path), "--fleet"]) == StatusCode.OK
    out = capsys.readouterr().out
    assert f"replicas:    {GROUPS[0]}: 1 beating, {GROUPS[1]}: 1 beating" in out
    assert f"i-bbbb [{GROUPS[1]}]: active, volume vol-b" in out


def test_verify_flags_versions_held_by_fewer_volumes_than_replicas(clients, tmp_path):
    Bootstrap(group_config(tmp_path, 1), clients).run(create_buckets=True)
    enable_versioning(clients)
    a, b = member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-b")

    event = created("docs/a.txt", put(clients, "docs/a.txt", b"abc"), 3, at=AT)
    assert member_service(clients, a, group=GROUPS[0]).process(event).outcome == Outcome.STORED
    config_path = write_config(
        tmp_path / "config.yaml",
        a.root,
        queue={"url": f"{BASE}-1", "wait_time_seconds": 0},
        fleet={"replicas": 2},
    )

    def verify() -> tuple[int, list[dict[str, Any]]]:
        out, err = io.StringIO(), io.StringIO()
        code = restore_main(["verify", "--config", str(config_path), "--json"], out=out, err=err)
        return code, [json.loads(line) for line in out.getvalue().splitlines()]

    code, lines = verify()
    assert code == 1
    [short] = [line for line in lines if line.get("type") == "under_replicated"]
    assert (short["key"], short["holders"], short["replicas"]) == ("docs/a.txt", ["vol-a"], 2)
    assert lines[-1]["under_replicated"] == 1

    assert member_service(clients, b, group=GROUPS[1]).process(event).outcome == Outcome.STORED
    code, lines = verify()
    assert code == 0 and lines[-1]["under_replicated"] == 0


def test_check_config_online_expects_the_bucket_to_notify_the_topic(clients, tmp_path):
    config = group_config(tmp_path, 2)
    Bootstrap(config, clients).run(create_buckets=True)

    report = check_online(config, clients)
    assert not [p for p in report.problems if p.startswith("buckets:")], report.problems

    clients.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    report = check_online(config, clients)
    assert f"buckets: {BUCKET}: no notification sends its events to {TOPIC_ARN}" in " ".join(
        report.problems
    )
