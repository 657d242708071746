"""Snapshots against moto: taken under the barrier, recorded, polled, alerted, copied."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import pytest
import structlog
import yaml

from agent.cli import agent as cli
from agent.cli.common import ExitCode
from agent.events import EventKind, ObjectEvent
from agent.pipeline.backup import Outcome
from agent.runtime.wiring import compression_settings
from agent.snapshots.flush import Flusher
from agent.snapshots.listing import list_snapshots, snapshot_listing
from agent.snapshots.records import (
    JOURNAL_TAG,
    MANAGED_TAG,
    RECORDS_DIR,
    RECORDS_FILE,
    SOURCE_TAG,
    VOLUME_TAG,
    append_record,
    read_records,
    tag_dict,
)
from agent.storage.barrier import WriteBarrier
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE, make_config
from tests.support.clock import FakeClock
from tests.support.service import make_service
from tests.support.snapshots import make_manager, make_volume

T0 = datetime(2026, 6, 1, 3, 0, tzinfo=UTC)


@pytest.fixture
def ec2(aws, monkeypatch):
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    return aws.session.client("ec2")


def snapshot_items(aws, volume_id):
    response = aws.dynamodb.query(
        TableName=TABLE,
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": f"snapshot#{volume_id}"}},
    )
    return response["Items"]


def test_a_snapshot_is_tagged_recorded_on_the_volume_and_in_dynamodb(aws, ec2, volume):
    volume_id = make_volume(ec2)
    Journal(volume.journal_dir).append(_record_for("a.txt"))
    position = Journal(volume.journal_dir).position()
    manager = make_manager(
        ec2,
        FakeClock(T0),
        volume.root,
        volume_id,
        dynamodb=aws.dynamodb,
        table=TABLE,
        settings={"tags": {"team": "storage"}},
    )

    run = manager.take()

    assert run.state == "completed"
    tags = tag_dict(ec2.describe_snapshots(SnapshotIds=[run.snapshot_id])["Snapshots"][0]["Tags"])
    assert tags[MANAGED_TAG] == "true"
    assert tags[VOLUME_TAG] == volume_id
    assert tags[JOURNAL_TAG] == f"{position.segment}:{position.offset}"
    assert tags["team"] == "storage"
    [record] = read_records(volume.root)
    assert record["snapshot_id"] == run.snapshot_id and record["state"] == "completed"
    [item] = snapshot_items(aws, volume_id)
    assert item["state"]["S"] == "completed"
    assert item["journal_position"]["S"] == tags[JOURNAL_TAG]
    assert "gsi_bucket" not in item  # outside the object key space: no key listing sees it
    assert list(Ledger(aws.dynamodb, TABLE).keys(BUCKET)) == []
    # Metrics from EC2 and, after a restart, the duration from the volume's record
    manager.clock.advance(hours=2)
    restarted = make_manager(ec2, manager.clock, volume.root, volume_id)
    assert restarted.metrics() == {
        "SnapshotCount": 1.0,
        "SnapshotAgeSeconds": 7200.0,
        "SnapshotDurationSeconds": 0.0,
    }


def test_a_record_appended_after_a_torn_line_is_kept(tmp_path):
    append_record(tmp_path, {"snapshot_id": "snap-1", "state": "pending", "taken_at": "1"})
    with (tmp_path / RECORDS_DIR / RECORDS_FILE).open("ab") as records:
        records.write(b'{"snapshot_id": "snap-1", "sta')  # a crash cut this append short

    append_record(tmp_path, {"snapshot_id": "snap-2", "state": "completed", "taken_at": "2"})

    assert [(r["snapshot_id"], r["state"]) for r in read_records(tmp_path)] == [
        ("snap-1", "pending"),
        ("snap-2", "completed"),
    ]


def test_a_record_written_in_short_writes_is_whole(tmp_path, monkeypatch):
    real_write = os.write
    # a nearly full disk: every write takes at most 7 bytes
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:7]))

    append_record(tmp_path, {"snapshot_id": "snap-1", "state": "completed", "taken_at": "1"})

    assert [(r["snapshot_id"], r["state"]) for r in read_records(tmp_path)] == [
        ("snap-1", "completed")
    ]


def test_a_failed_snapshot_is_alerted_and_recorded(aws, ec2, volume):
    volume_id = make_volume(ec2)

    def fail(parsed, **_):
        for item in parsed.get("Snapshots", []):
            item["State"] = "error"
            item["StateMessage"] = "internal error copying blocks"

    ec2.meta.events.register("after-call.ec2.DescribeSnapshots", fail)
    alerts: list[tuple[str, str]] = []
    manager = make_manager(ec2, FakeClock(T0), volume.root, volume_id, alerts=alerts)

    run = manager.take()

    assert run.state == "error"
    assert [kind for kind, _ in alerts] == ["snapshot.failed"]
    assert "internal error copying blocks" in alerts[0][1]
    assert read_records(volume.root)[0]["state"] == "error"


def test_a_snapshot_pending_past_the_timeout_is_alerted_as_stuck(aws, ec2, volume):
    volume_id = make_volume(ec2)

    def pending(parsed, **_):
        for item in parsed.get("Snapshots", []):
            item["State"] = "pending"
            item["Progress"] = "3%"

    ec2.meta.events.register("after-call.ec2.DescribeSnapshots", pending)
    alerts: list[tuple[str, str]] = []
    clock = FakeClock(T0)
    manager = make_manager(
        ec2,
        clock,
        volume.root,
        volume_id,
        alerts=alerts,
        poll_seconds=600,
        completion_timeout=timedelta(hours=1),
    )

    run = manager.take()

    assert run.state == "stuck"
    assert [kind for kind, _ in alerts] == ["snapshot.stuck"]
    assert clock.sleeps == [600] * 6  # polled until the hour was up, then gave up


def test_a_retention_failure_is_alerted_and_the_good_snapshot_still_recorded(aws, ec2, volume):
    volume_id = make_volume(ec2)

    def deny_listing(params, **_):
        if "Filters" in params:  # the retention listing, not the completion poll
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": "UnauthorizedOperation", "Message": "denied"}},
                "DescribeSnapshots",
            )

    ec2.meta.events.register("provide-client-params.ec2.DescribeSnapshots", deny_listing)
    alerts: list[tuple[str, str]] = []
    manager = make_manager(ec2, FakeClock(T0), volume.root, volume_id, alerts=alerts)

    run = manager.take()

    assert run.state == "completed"
    assert [kind for kind, _ in alerts] == ["snapshot.retention_failed"]
    assert read_records(volume.root)[0]["state"] == "completed"


def test_run_scheduled_alerts_instead_of_raising_when_create_fails(aws, ec2, volume):
    alerts: list[tuple[str, str]] = []
    manager = make_manager(ec2, FakeClock(T0), volume.root, "vol-0123456789abcdef0", alerts=alerts)

    assert manager.run_scheduled() is None

    assert [kind for kind, _ in alerts] == ["snapshot.failed"]
    assert "CreateSnapshot" in alerts[0][1]


def test_run_scheduled_does_nothing_when_disabled(aws, ec2, volume):
    volume_id = make_volume(ec2)
    manager = make_manager(ec2, FakeClock(T0), volume.root, volume_id, settings={"enabled": False})
    assert manager.run_scheduled() is None
    assert list_snapshots(ec2, REGION, volume_id) == []


def test_snapshots_are_copied_to_the_second_region_and_pruned_there_too(aws, ec2, volume):
    volume_id = make_volume(ec2)
    copy_ec2 = aws.session.client("ec2", region_name="eu-west-1")
    clock = FakeClock(T0)
    manager = make_manager(
        ec2,
        clock,
        volume.root,
        volume_id,
        copy_ec2=copy_ec2,
        dynamodb=aws.dynamodb,
        table=TABLE,
        settings={
            "copy_to_region": "eu-west-1",
            "retain": {"last": 2, "daily": 0, "weekly": 0},
        },
    )
    runs = []
    for _ in range(3):
        runs.append(manager.take())
        clock.advance(days=1)

    copies = list_snapshots(copy_ec2, "eu-west-1", volume_id)
    assert [c.source_snapshot_id for c in copies] == [r.snapshot_id for r in runs[1:]]
    assert [s.snapshot_id for s in list_snapshots(ec2, REGION, volume_id)] == [
        r.snapshot_id for r in runs[1:]
    ]
    assert all(c.snapshot_id == r.copy_snapshot_id for c, r in zip(copies, runs[1:], strict=True))
    assert (
        tag_dict(
            copy_ec2.describe_snapshots(SnapshotIds=[copies[0].snapshot_id])["Snapshots"][0]["Tags"]
        )[SOURCE_TAG]
        == runs[1].snapshot_id
    )
    states = {i["snapshot_id"]["S"]: i["state"]["S"] for i in snapshot_items(aws, volume_id)}
    assert states == {
        runs[0].snapshot_id: "deleted",
        runs[1].snapshot_id: "completed",
        runs[2].snapshot_id: "completed",
    }
    # The listing `backup-restore snapshots` prints: both regions, found from EC2 alone
    config = make_config(volume.root, snapshots={"copy_to_region": "eu-west-1"})
    listing = snapshot_listing(config, aws)
    assert sorted((s.region, s.snapshot_id) for s in listing) == sorted(
        [(REGION, r.snapshot_id) for r in runs[1:]] + [("eu-west-1", c.snapshot_id) for c in copies]
    )


# -- the CLI ------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    """cli.main configures structlog and logging for the process: undo it after the test,
    or later tests log to this test's (closed) captured stream."""
    saved = structlog.get_config()
    handlers = list(logging.getLogger().handlers)
    yield
    structlog.configure(**saved)
    logging.getLogger().handlers[:] = handlers


def write_config(path: Path, root: Path, volume_id: str) -> Path:
    raw = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL},
        "buckets": [BUCKET],
        "storage": {"root": str(root), "volume_id": volume_id},
        "state": {"table": TABLE},
        "snapshots": {
            "enabled": True,
            "schedule": "6h",
            "retain": {"last": 1, "daily": 0, "weekly": 0},
        },
    }
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_dry_run_changes_nothing_then_a_real_run_snapshots(
    aws, ec2, volume, tmp_path, capsys, restore_logging
):
    volume_id = make_volume(ec2)
    old = ec2.create_snapshot(
        VolumeId=volume_id,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [
                    {"Key": MANAGED_TAG, "Value": "true"},
                    {"Key": VOLUME_TAG, "Value": volume_id},
                ],
            }
        ],
    )["SnapshotId"]
    config = write_config(tmp_path / "config.yaml", volume.root, volume_id)
    before = sorted(p.name for p in volume.root.iterdir())

    assert cli.main(["snapshot", "--config", str(config), "--dry-run"]) == ExitCode.OK

    out = capsys.readouterr().out
    assert f"would snapshot {volume_id}" in out
    assert f"would delete {old}" not in out  # the only snapshot is the one `last: 1` keeps
    assert [s.snapshot_id for s in list_snapshots(ec2, REGION, volume_id)] == [old]
    assert snapshot_items(aws, volume_id) == []
    assert sorted(p.name for p in volume.root.iterdir()) == before

    assert cli.main(["snapshot", "--config", str(config)]) == ExitCode.OK

    out = capsys.readouterr().out
    [new] = list_snapshots(ec2, REGION, volume_id)
    assert new.snapshot_id != old and f"snapshot {new.snapshot_id}" in out
    assert f"deleted {old}" in out
    assert len(read_records(volume.root)) == 2  # the new one, and the old one's deletion
    [item] = snapshot_items(aws, volume_id)  # the hand-made one was never recorded: no stray item
    assert item["snapshot_id"]["S"] == new.snapshot_id and item["state"]["S"] == "completed"


def test_cli_refuses_a_root_without_the_volume_marker(aws, ec2, tmp_path, restore_logging):
    empty = tmp_path / "unmounted"
    empty.mkdir()
    config = write_config(tmp_path / "config.yaml", empty, make_volume(ec2))
    assert cli.main(["snapshot", "--config", str(config)]) == ExitCode.VOLUME_NOT_READY
    assert list_snapshots(ec2, REGION) == []


# -- a backup in flight during a snapshot --------------------------------------------------


def _record_for(key: str):
    from agent.records import VersionRecord

    return VersionRecord.for_event(_event(key, b"x"), backup_time=T0, volume_id="vol-test")


def _event(key: str, body: bytes) -> ObjectEvent:
    import hashlib

    return ObjectEvent(
        kind=EventKind.CREATED,
        bucket=BUCKET,
        key=key,
        event_name="ObjectCreated:Put",
        event_time=datetime.now(UTC),
        size=len(body),
        etag=hashlib.md5(body, usedforsecurity=False).hexdigest(),
    )


class ProbedBarrier(WriteBarrier):
    """The real barrier; counts the copies that reached it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.arrived = threading.Semaphore(0)

    def shared(self):  # type: ignore[override]
        self.arrived.release()
        return super().shared()


class HoldingFlusher(Flusher):
    """Records the flush and keeps the barrier closed until the test lets go."""

    def __init__(self, order: list[str]) -> None:
        super().__init__(which=lambda _: None, sync=lambda _: None)
        self.order = order
        self.holding = threading.Event()
        self.let_go = threading.Event()

    @contextlib.contextmanager
    def flushed(self, root: Path) -> Iterator[str]:
        self.order.append("flush")
        self.holding.set()
        assert self.let_go.wait(10)
        yield "sync"


def test_a_backup_in_flight_finishes_before_the_snapshot_and_a_new_one_waits(
    aws, ec2, config, volume
):
    order: list[str] = []
    first_in_ledger = threading.Event()
    let_first_finish = threading.Event()

    class GatedLedger(Ledger):
        def write(self, record):
            if record.key == "first.txt":
                first_in_ledger.set()
                assert let_first_finish.wait(10)
            result = super().write(record)
            order.append(f"ledger:{record.key}")
            return result

    class OrderedJournal(Journal):
        def append(self, record):
            position = super().append(record)
            order.append(f"journal:{record.key}")
            return position

    for key in ("first.txt", "second.txt"):
        aws.s3.put_object(Bucket=BUCKET, Key=key, Body=key.encode() * 1000)
    barrier = ProbedBarrier(volume.root)
    service = make_service(
        aws,
        volume,
        journal=OrderedJournal(volume.journal_dir),
        ledger=GatedLedger(aws.dynamodb, TABLE),
        compression=compression_settings(config),
        barrier=barrier,
    )
    volume_id = make_volume(ec2)
    ec2.meta.events.register(
        "before-call.ec2.CreateSnapshot", lambda **_: order.append("create_snapshot")
    )
    snapshot_waiting = threading.Event()

    def waiting_sleep(seconds: float) -> None:
        snapshot_waiting.set()
        threading.Event().wait(seconds)

    flusher = HoldingFlusher(order)
    manager = make_manager(
        ec2,
        FakeClock(T0),
        volume.root,
        volume_id,
        barrier=WriteBarrier(volume.root, poll_seconds=0.005, sleep=waiting_sleep),
        flusher=flusher,
    )
    results: dict[str, object] = {}

    def run(name, fn):
        thread = threading.Thread(target=lambda: results.__setitem__(name, fn()), daemon=True)
        thread.start()
        return thread

    body1 = b"first.txt" * 1000
    body2 = b"second.txt" * 1000
    # Given a copy inside its critical section (renamed, journaled, writing to DynamoDB)
    first = run("first", lambda: service.process(_event("first.txt", body1)))
    assert first_in_ledger.wait(10)
    # When a snapshot starts, it waits for that copy
    snap = run("snapshot", manager.take)
    assert snapshot_waiting.wait(10)
    assert "create_snapshot" not in order and "flush" not in order
    let_first_finish.set()
    # ... and while it holds the barrier, a new copy reaches the gate and waits
    assert flusher.holding.wait(10)
    second = run("second", lambda: service.process(_event("second.txt", body2)))
    assert barrier.arrived.acquire(timeout=10) and barrier.arrived.acquire(timeout=10)
    flusher.let_go.set()
    for thread in (first, snap, second):
        thread.join(10)
        assert not thread.is_alive()

    # Then the order is: first copy done → flush → CreateSnapshot → second copy
    assert order == [
        "journal:first.txt",
        "ledger:first.txt",
        "flush",
        "create_snapshot",
        "journal:second.txt",
        "ledger:second.txt",
    ]
    # ... the snapshot's journal position is exactly the end of the first copy's line
    records = list(Journal(volume.journal_dir).read_all())
    assert [r.key for r in records] == ["first.txt", "second.txt"]
    segment = next(volume.journal_dir.glob("*.jsonl"))
    first_line = segment.read_bytes().split(b"\n")[0] + b"\n"
    assert results["snapshot"].journal_position == f"{segment.name}:{len(first_line)}"
    # ... and nothing is lost: both copies are stored and recorded
    assert results["first"].outcome is Outcome.STORED
    assert results["second"].outcome is Outcome.STORED
    ledger = Ledger(aws.dynamodb, TABLE)
    for key, body in (("first.txt", body1), ("second.txt", body2)):
        latest = ledger.latest(BUCKET, key)
        assert latest is not None and latest.size == len(body)
        volume.verify_copy(latest.sha256, len(body))
