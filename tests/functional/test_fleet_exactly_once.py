"""Two members on one queue and one table (moto): each version is copied by one of them.

The conditional version write decides. A redelivery of a version another member recorded
is not copied again (its volume holds the copy); a duplicate S3 delivery taken by two
members at once loses the write on one of them, which keeps its copy, counted as
`fleet_duplicates` (docs/design.md, "A fleet on one queue").
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from agent.cli.agent import main as agent_main
from agent.cli.restore import main as restore_main
from agent.config import queue_name
from agent.fleet.heartbeat import Heartbeat, Identity
from agent.fleet.registry import Registry
from agent.pipeline import delivery
from agent.pipeline.backup import Outcome
from agent.runtime.daemon import Daemon
from agent.runtime.wiring import fleet_identity
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, TABLE, make_config, queue_counts
from tests.support.backed_up import write_config
from tests.support.events import notification, s3_record
from tests.support.fleet import member_service, member_volume, two_members
from tests.support.lifecycle import created, enable_versioning, put
from tests.support.waiting import wait_until

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)


def test_a_redelivered_version_another_member_recorded_is_not_copied_again(aws, tmp_path):
    enable_versioning(aws)
    (_, member_a), (b, member_b) = two_members(aws, tmp_path)
    response = put(aws, "report.pdf", b"quarterly figures")
    event = created("report.pdf", response, 17, at=AT)

    assert member_a.process(event).outcome == Outcome.STORED
    # a was killed before its DeleteMessage: the message comes back, to b
    with delivery.delivering(delivery.Delivery("m-1", receive_count=2)):
        again = member_b.process(event)

    assert again.outcome == Outcome.ALREADY_DONE
    assert again.record is not None and again.record.volume_id == "vol-a"
    assert list(Journal(b.journal_dir).read_all()) == []
    assert not list(b.objects_dir.rglob("*.zst"))
    recorded = Ledger(aws.dynamodb, TABLE).get_version(BUCKET, "report.pdf", event.version_token)
    assert recorded is not None and recorded.volume_id == "vol-a"


def test_a_duplicate_delivery_both_members_took_is_recorded_once_and_counted(aws, tmp_path):
    enable_versioning(aws)
    (_, member_a), (b, member_b) = two_members(aws, tmp_path)
    response = put(aws, "report.pdf", b"quarterly figures")
    event = created("report.pdf", response, 17, at=AT)

    assert member_a.process(event).outcome == Outcome.STORED
    # S3 sent the event twice; b took the second message at its first receive
    with delivery.delivering(delivery.Delivery("m-2", receive_count=1)):
        lost = member_b.process(event)

    assert lost.outcome == Outcome.ALREADY_DONE
    assert lost.record is not None and lost.record.volume_id == "vol-a"
    assert member_b.stats.lifecycle["fleet_duplicates"] == 1
    [kept] = Journal(b.journal_dir).read_all()  # b's copy stays, journalled: restorable
    assert kept.volume_id == "vol-b" and b.has_copy(kept.sha256 or "")
    recorded = Ledger(aws.dynamodb, TABLE).get_version(BUCKET, "report.pdf", event.version_token)
    assert recorded is not None and recorded.volume_id == "vol-a"  # the winner, only


def test_two_daemons_on_one_queue_copy_every_version_once(aws, tmp_path):
    enable_versioning(aws)
    a, b = member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-b")
    # moto's own events carry no versionId: the test sends the events real S3 would
    aws.s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={})
    versions = {}
    for n in range(24):
        key = f"docs/file-{n:02d}.txt"
        response = put(aws, key, f"content {n}".encode())
        versions[key] = response["VersionId"]
    assert queue_counts(aws.sqs) == (0, 0)
    for n, (key, version_id) in enumerate(versions.items()):
        record = s3_record(
            key,
            bucket=BUCKET,
            size=len(f"content {n}"),
            versionId=version_id,
            sequencer=f"{n + 1:016X}",
        )
        aws.sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=notification(record))
    daemons = []
    for volume in (a, b):
        config = make_config(
            volume.root,
            metrics={"prometheus": None, "cloudwatch": False, "instance_id": "i-test"},
        )
        daemons.append(Daemon(config, aws))
    try:
        for daemon, volume in zip(daemons, (a, b), strict=True):
            daemon.start(volume.read_marker())
        ledger = Ledger(aws.dynamodb, TABLE)

        def all_recorded() -> bool:
            return all(
                [r.version_id for r in ledger.versions(BUCKET, k)] == [v]
                for k, v in versions.items()
            )

        wait_until(all_recorded, timeout=60, what="every version recorded")
        wait_until(lambda: queue_counts(aws.sqs) == (0, 0), timeout=30, what="queue drained")
    finally:
        for daemon in daemons:
            daemon.stop()

    journals = {v.root.name: list(Journal(v.journal_dir).read_all()) for v in (a, b)}
    copied = [(r.key, r.version_id) for records in journals.values() for r in records]
    assert sorted(copied) == sorted(versions.items())  # each version once, fleet-wide
    for key in versions:
        [record] = ledger.versions(BUCKET, key)
        holder = a if record.volume_id == "vol-a" else b
        assert holder.has_copy(record.sha256 or "")
        assert [r.key for r in journals[record.volume_id] if r.key == key] == [key]
    backed_up = sum(d.stats.snapshot().backups_succeeded for d in daemons)
    assert backed_up == len(versions)


# -- restore knows where ---------------------------------------------------------------


def test_a_restore_from_one_member_takes_its_versions_and_names_the_holders_of_the_rest(
    aws, tmp_path
):
    enable_versioning(aws)
    (_, member_a), (b, member_b) = two_members(aws, tmp_path)
    for key, member in (("docs/a.txt", member_a), ("docs/b.txt", member_b)):
        response = put(aws, key, key.encode())
        assert member.process(created(key, response, len(key), at=AT)).outcome == Outcome.STORED
    Heartbeat(
        Registry(aws.dynamodb, TABLE, queue_name(QUEUE_URL)),
        lambda: Identity("i-aaaa", "i-aaaa", "vol-a", "us-east-1a", "1.0"),
        interval_seconds=30,
        clock=lambda: datetime.now(UTC),
    ).beat()
    config_path = write_config(tmp_path / "config.yaml", b.root)

    def restore(command: str, *args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = restore_main([command, "--config", str(config_path), *args], out=out, err=err)
        return code, out.getvalue()

    code, rows = restore("list", "--json")
    holders = {row["key"]: row["volume_id"] for row in map(json.loads, rows.splitlines())}
    assert code == 0 and holders == {"docs/a.txt": "vol-a", "docs/b.txt": "vol-b"}

    target = tmp_path / "restored"
    code, out = restore("restore", "--prefix", "docs/", "--to", str(target))

    assert code == 1  # not everything was restorable here
    assert (target / "docs" / "b.txt").read_bytes() == b"docs/b.txt"
    assert not (target / "docs" / "a.txt").exists()
    assert "held by another volume (restore there):" in out
    assert "docs/a.txt: version " in out and "volume vol-a on i-aaaa (us-east-1a)" in out
    assert "restored 1 files" in out and "held elsewhere 1" in out

    code, out = restore("restore", "--prefix", "docs/", "--to", str(tmp_path / "j"), "--json")
    summary = json.loads(out.splitlines()[-1])
    assert code == 1 and summary["restored"] == 1 and not summary["ok"]
    assert [(h["key"], h["volume_id"]) for h in summary["held_elsewhere"]] == [
        ("docs/a.txt", "vol-a")
    ]


# -- a member leaves: its volume adopted -------------------------------------------------


def test_an_adopted_volume_is_served_by_its_new_member_and_nothing_is_copied_again(
    aws, tmp_path, capsys
):
    enable_versioning(aws)
    a, b = member_volume(tmp_path, "vol-a"), member_volume(tmp_path, "vol-b")
    member_a = member_service(aws, a)
    events = []
    for key in ("docs/one.txt", "docs/two.txt"):
        response = put(aws, key, key.encode())
        events.append(created(key, response, len(key), at=AT))
        assert member_a.process(events[-1]).outcome == Outcome.STORED
    # a was killed between its journal line and its ledger write for docs/two.txt
    aws.dynamodb.delete_item(
        TableName=TABLE,
        Key={"pk": {"S": f"{BUCKET}/docs/two.txt"}, "sk": {"S": "V#" + events[1].version_token}},
    )
    registry = Registry(aws.dynamodb, TABLE, queue_name(QUEUE_URL))
    Heartbeat(
        registry,
        lambda: Identity("i-aaaa", "i-aaaa", "vol-a", "us-east-1a", "1.0"),
        interval_seconds=30,
        clock=lambda: datetime(2026, 11, 30, tzinfo=UTC),  # long gone: heartbeat missing
    ).beat()
    Heartbeat(  # the adopting member, running on this host with vol-b
        registry,
        lambda: fleet_identity("vol-b"),
        interval_seconds=30,
        clock=lambda: datetime.now(UTC),
    ).beat()
    config_path = write_config(tmp_path / "config.yaml", b.root)
    capsys.readouterr()

    assert agent_main(["adopt-volume", "--config", str(config_path), "--root", str(a.root)]) == 0

    out = capsys.readouterr().out
    assert "volume vol-a" in out and "1 recorded now, 1 already recorded" in out
    assert "members retired: i-aaaa" in out
    ledger = Ledger(aws.dynamodb, TABLE)
    for event in events:
        recorded = ledger.get_version(BUCKET, event.key, event.version_token)
        assert recorded is not None and recorded.volume_id == "vol-a"  # the volume, unchanged
    holder = registry.holders()["vol-a"]
    assert holder.member_id.endswith("/vol-b")  # this host's member (off EC2)
    [gone] = [m for m in registry.members()[0] if m.member_id == "i-aaaa"]
    assert gone.state == "stopped" and not gone.missing(datetime.now(UTC))
    assert len(list(Journal(a.journal_dir).read_all())) == 2  # nothing copied again
