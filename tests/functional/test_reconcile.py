"""Reconcile / backfill against moto: lost events are made good, restarts resume."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from agent.config import ReconcileConfig
from agent.lifecycle.context import Pacer, StateFile
from agent.lifecycle.reconcile import CHECKPOINT_NAME, Reconciler
from agent.lifecycle.retention import RetentionPolicy
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, TABLE
from tests.support.lifecycle import (
    created,
    enable_versioning,
    journal_records,
    make_service,
    put,
)


def make_reconciler(aws, config, volume, service=None, **settings):
    service = service or make_service(aws, config, volume)
    return Reconciler(
        s3=aws.s3,
        ledger=Ledger(aws.dynamodb, TABLE),
        service=service,
        volume=volume,
        buckets=[BUCKET],
        settings=ReconcileConfig(**settings),
        limiter=Pacer(1000, sleep=lambda s: None),
    )


def lose_all_events(aws) -> int:
    lost = 0
    while messages := aws.sqs.receive_message(
        QueueUrl=QUEUE_URL, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages"):
        for message in messages:
            aws.sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])
            lost += 1
    return lost


def stored_counts(volume) -> Counter[tuple[str, str]]:
    return Counter((r.key, r.version_token) for r in journal_records(volume))


def test_objects_uploaded_before_notifications_existed_are_backfilled(aws, config, volume):
    aws.s3.put_bucket_notification_configuration(
        Bucket=BUCKET, NotificationConfiguration={}
    )  # the bucket filled before anyone configured events
    bodies = {f"old/file-{i}.txt": f"content {i} ".encode() * 100 for i in range(5)}
    for key, body in bodies.items():
        put(aws, key, body)
    assert aws.sqs.receive_message(QueueUrl=QUEUE_URL).get("Messages") is None

    report = make_reconciler(aws, config, volume).run_once()

    ledger = Ledger(aws.dynamodb, TABLE)
    assert report.completed and report.backed_up == 5 and report.failed == 0
    for key, body in bodies.items():
        latest = ledger.latest(BUCKET, key)
        assert latest is not None and latest.size == len(body)
        with volume.open_copy(latest.sha256) as reader:
            assert reader.read() == body


def test_after_a_queue_purge_missing_and_overwritten_objects_are_backed_up(aws, config, volume):
    service = make_service(aws, config, volume)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    first = put(aws, "kept.txt", b"v1" * 50)
    service.process(created("kept.txt", first, 100, at=an_hour_ago, sequencer="0A1B"))
    same = put(aws, "same.txt", b"same" * 50)
    service.process(created("same.txt", same, 200, at=an_hour_ago, sequencer="0A1C"))
    put(aws, "kept.txt", b"v2" * 60)  # overwritten while events were lost
    put(aws, "new.txt", b"new" * 10)
    assert lose_all_events(aws) == 4  # what a purge does (moto allows one PurgeQueue a minute)

    report = make_reconciler(aws, config, volume).run_once()

    ledger = Ledger(aws.dynamodb, TABLE)
    assert (report.backed_up, report.up_to_date) == (2, 1)
    kept = ledger.latest(BUCKET, "kept.txt")
    assert kept is not None and kept.size == 120  # LATEST moved past the sequenced v1
    assert ledger.latest(BUCKET, "new.txt").size == 30
    assert len(ledger.versions(BUCKET, "kept.txt")) == 2

    again = make_reconciler(aws, config, volume).run_once()
    assert (again.backed_up, again.up_to_date) == (0, 3)


def test_dry_run_reports_and_writes_nothing(aws, config, volume):
    put(aws, "a.txt", b"aaaa")
    report = make_reconciler(aws, config, volume).run_once(dry_run=True)
    assert report.would_back_up == [(BUCKET, "a.txt", None)] and report.bytes == 4
    assert Ledger(aws.dynamodb, TABLE).latest(BUCKET, "a.txt") is None
    assert not StateFile(volume, CHECKPOINT_NAME).path.exists()
    assert journal_records(volume) == []


def test_versioned_bucket_backs_up_every_version_and_delete_markers(aws, config, volume):
    enable_versioning(aws)
    versions = [put(aws, "doc.txt", f"draft {i}".encode())["VersionId"] for i in range(3)]
    put(aws, "removed.txt", b"soon gone")
    marker = aws.s3.delete_object(Bucket=BUCKET, Key="removed.txt")["VersionId"]

    report = make_reconciler(aws, config, volume).run_once()

    ledger = Ledger(aws.dynamodb, TABLE)
    assert {r.version_id for r in ledger.versions(BUCKET, "doc.txt")} == set(versions)
    assert ledger.latest(BUCKET, "doc.txt").version_id == versions[-1]
    gone = ledger.latest(BUCKET, "removed.txt")
    assert gone.deleted and gone.version_id == marker
    assert (report.backed_up, report.tombstoned) == (4, 1)


def test_noncurrent_versions_retention_would_drop_are_not_fetched(aws, config, volume):
    enable_versioning(aws)
    versions = [put(aws, "doc.txt", f"draft {i}".encode())["VersionId"] for i in range(4)]
    reconciler = make_reconciler(aws, config, volume)
    reconciler.policy = RetentionPolicy(keep_last_versions=2)
    reconciler.run_once()
    ledger = Ledger(aws.dynamodb, TABLE)
    assert {r.version_id for r in ledger.versions(BUCKET, "doc.txt")} == set(versions[-2:])
    assert ledger.latest(BUCKET, "doc.txt").version_id == versions[-1]


class Crash(BaseException):
    """Stands for the process dying (SIGKILL) in the middle of a run."""


def test_a_reconcile_interrupted_midway_resumes_and_backs_up_each_object_once(aws, config, volume):
    enable_versioning(aws)
    keys = [f"batch/{i:02d}.bin" for i in range(12)]
    for key in keys:
        put(aws, key, key.encode() * 20)
    service = make_service(aws, config, volume)
    real_process = service.process
    calls: list[str] = []

    def dying_process(event, **options):
        if len(calls) == 5:
            raise Crash
        calls.append(event.key)
        return real_process(event, **options)

    service.process = dying_process  # type: ignore[method-assign]
    with pytest.raises(Crash):
        make_reconciler(aws, config, volume, service=service, checkpoint_every=2).run_once()
    assert StateFile(volume, CHECKPOINT_NAME).load()["buckets"][BUCKET]["after"] == keys[3]

    service.process = real_process  # type: ignore[method-assign]
    with capture_logs() as logs:
        report = make_reconciler(aws, config, volume, checkpoint_every=2).run_once()

    assert report.resumed and report.completed
    assert report.keys == 8  # keys after the checkpoint only
    assert (report.up_to_date, report.backed_up) == (1, 7)  # key 5 was done before the crash
    counts = stored_counts(volume)
    assert sorted(k for k, _ in counts) == keys and set(counts.values()) == {1}
    assert any(e["event"] == "reconcile.resumed" for e in logs)
    assert StateFile(volume, CHECKPOINT_NAME).load()["completed_at"]

    fresh = make_reconciler(aws, config, volume).run_once()  # a completed run starts over
    assert not fresh.resumed and fresh.keys == 12 and fresh.backed_up == 0


def test_backups_are_paced_by_the_rate_limiter(aws, config, volume):
    for i in range(4):
        put(aws, f"r{i}", b"x" * (i + 1))
    waits: list[float] = []
    reconciler = make_reconciler(aws, config, volume)
    now = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    reconciler.limiter = Pacer(2, clock=lambda: now[0], sleep=sleep)
    reconciler.run_once()
    assert waits == [0.5, 0.5, 0.5]
    assert reconciler.stats.lifecycle["reconcile.backed_up"] == 4


def test_deletes_whose_events_were_lost_are_recorded_as_tombstones(aws, config, volume):
    service = make_service(aws, config, volume)
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    for i, key in enumerate(["a.txt", "b.txt", "c.txt"]):
        response = put(aws, key, key.encode() * 10)
        service.process(created(key, response, 50, at=an_hour_ago, sequencer=f"0B{i}"))
    for key in ("b.txt", "c.txt"):  # the middle key and the last one
        aws.s3.delete_object(Bucket=BUCKET, Key=key)
    lose_all_events(aws)

    dry = make_reconciler(aws, config, volume).run_once(dry_run=True)
    assert sorted(dry.would_back_up) == [
        (BUCKET, "b.txt", "(deleted)"),
        (BUCKET, "c.txt", "(deleted)"),
    ]
    report = make_reconciler(aws, config, volume).run_once()

    ledger = Ledger(aws.dynamodb, TABLE)
    assert report.tombstoned == 2
    assert not ledger.latest(BUCKET, "a.txt").deleted
    for key in ("b.txt", "c.txt"):
        assert ledger.latest(BUCKET, key).deleted  # LATEST moved past the sequenced put
        kept = [r for r in ledger.versions(BUCKET, key) if not r.deleted]
        volume.verify_copy(kept[0].sha256, 50)  # still restorable
    assert make_reconciler(aws, config, volume).run_once().tombstoned == 0
