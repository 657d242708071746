"""Retention forgets exactly the versions the policy drops; GC frees only unreferenced copies."""

from __future__ import annotations

import os
import pathlib
import threading
from datetime import UTC, datetime, timedelta

from agent.lifecycle.gc import TRASH_DIR, GarbageCollector
from agent.lifecycle.retention import Retention, RetentionPolicy
from agent.pipeline.delivery import Delivery, delivering
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.clock import FakeClock
from tests.support.lifecycle import (
    created,
    deleted,
    enable_versioning,
    journal_records,
    make_service,
    put,
)

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=10)


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def back_up_versions(aws, config, volume, key, bodies_and_days):
    """Put each body as a new version and process its event, dated `day(d)`."""
    service = make_service(aws, config, volume, clock=FakeClock(NOW))
    ids = []
    for i, (body, d) in enumerate(bodies_and_days):
        response = put(aws, key, body)
        service.process(
            created(key, response, len(body), at=day(d), sequencer=f"{d * 1000 + i:016X}")
        )
        ids.append(response["VersionId"])
    return service, ids


def retention(aws, volume, clock, **policy) -> Retention:
    return Retention(
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        policy=RetentionPolicy(**policy),
        buckets=[BUCKET],
        clock=clock,
    )


def collector(volume, *, now=NOW + timedelta(hours=2), after_scan=None) -> GarbageCollector:
    return GarbageCollector(
        volume=volume,
        journal=Journal(volume.journal_dir),
        grace_period=timedelta(hours=1),
        clock=FakeClock(now),
        after_scan=after_scan,
    )


def version_ids(aws, key):
    return {r.version_id for r in Ledger(aws.dynamodb, TABLE).versions(BUCKET, key)}


def test_retention_keeps_exactly_the_right_versions_and_gc_frees_the_rest(aws, config, volume):
    enable_versioning(aws)
    bodies = [b"one" * 100, b"shared" * 100, b"three" * 100, b"shared" * 100, b"five" * 100]
    dated = zip(bodies, [0, 2, 4, 8, 9], strict=True)
    _, ids = back_up_versions(aws, config, volume, "doc.txt", dated)
    ledger = Ledger(aws.dynamodb, TABLE)
    digests = {r.version_id: r.sha256 for r in ledger.versions(BUCKET, "doc.txt")}

    report = retention(
        aws, volume, FakeClock(day(10)), keep_last_versions=2, keep_younger_than=timedelta(days=3)
    ).run_once()

    # v4, v5: the last two; v3: replaced on day 8, younger than 3 days; v1, v2: expired
    assert version_ids(aws, "doc.txt") == set(ids[2:])
    assert ledger.latest(BUCKET, "doc.txt").version_id == ids[4]
    assert report.expired == 2 and report.keys_expired == 0
    assert {r.version_id for r in journal_records(volume)} == set(ids[2:])  # replay forgets
    expired_notes = list(Journal(volume.journal_dir).read_notes("expired"))
    assert {n["version_id"] for n in expired_notes} == set(ids[:2])

    gc = collector(volume).run_once()

    assert gc.removed == 1 and gc.bytes_freed > 0  # v1's copy; v2 shares v4's content
    assert not volume.has_copy(digests[ids[0]])
    for version in ids[1:]:
        volume.verify_copy(digests[version])


def test_retention_dry_run_changes_nothing(aws, config, volume):
    enable_versioning(aws)
    _, ids = back_up_versions(aws, config, volume, "a.txt", [(b"1", 0), (b"2", 1), (b"3", 2)])
    report = retention(aws, volume, FakeClock(day(10)), keep_last_versions=1).run_once(dry_run=True)
    assert {r.version_id for r in report.would_expire} == set(ids[:2])
    assert version_ids(aws, "a.txt") == set(ids)
    assert list(Journal(volume.journal_dir).read_notes("expired")) == []


def test_a_deleted_file_stays_restorable_until_keep_deleted_days_expire(aws, config, volume):
    enable_versioning(aws)
    service, ids = back_up_versions(
        aws, config, volume, "gone.txt", [(b"first" * 50, 0), (b"last words" * 50, 1)]
    )
    marker = aws.s3.delete_object(Bucket=BUCKET, Key="gone.txt")["VersionId"]
    service.process(deleted("gone.txt", marker, at=day(5), sequencer=f"{5 * 1000:016X}"))
    ledger = Ledger(aws.dynamodb, TABLE)
    last = ledger.get_version(BUCKET, "gone.txt", "v:" + ids[1])
    policy = {"keep_last_versions": 1, "keep_deleted": timedelta(days=7)}

    # three days after the delete: the tombstone and the last version stay
    retention(aws, volume, FakeClock(day(8)), **policy).run_once()
    collector(volume).run_once()
    assert ledger.latest(BUCKET, "gone.txt").deleted
    assert version_ids(aws, "gone.txt") == {ids[1], marker}
    with volume.open_copy(last.sha256) as reader:
        assert reader.read() == b"last words" * 50

    # eight days after the delete: the whole key expires, and its copies go
    report = retention(aws, volume, FakeClock(day(12)), **policy).run_once()
    assert report.keys_expired == 1
    assert ledger.latest(BUCKET, "gone.txt") is None
    assert ledger.versions(BUCKET, "gone.txt") == []
    collector(volume).run_once()
    assert not volume.has_copy(last.sha256)
    assert [r for r in journal_records(volume) if r.key == "gone.txt"] == []


def test_the_delete_pipeline_records_a_tombstone_and_keeps_the_versions(aws, config, volume):
    enable_versioning(aws)
    service, ids = back_up_versions(aws, config, volume, "x.txt", [(b"keep me", 0)])
    marker = aws.s3.delete_object(Bucket=BUCKET, Key="x.txt")["VersionId"]
    result = service.process(deleted("x.txt", marker, at=day(1), sequencer=f"{1000:016X}"))
    ledger = Ledger(aws.dynamodb, TABLE)
    assert result.outcome.value == "tombstoned"
    assert ledger.latest(BUCKET, "x.txt").deleted
    kept = ledger.get_version(BUCKET, "x.txt", "v:" + ids[0])
    volume.verify_copy(kept.sha256)


def orphan(volume, config, body: bytes, age: timedelta):
    """A copy no record references, with an mtime `age` before NOW."""
    from agent.runtime.wiring import compression_settings

    copy = volume.write_copy([body], compression_settings(config))
    stamp = (NOW - age).timestamp()
    os.utime(copy.path, (stamp, stamp))
    return copy


def test_gc_removes_old_orphans_only_and_dry_run_only_reports(aws, config, volume):
    old = orphan(volume, config, b"old orphan" * 100, timedelta(days=2))
    young = orphan(volume, config, b"young orphan" * 100, timedelta(minutes=-90))

    dry = collector(volume).run_once(dry_run=True)
    assert dry.would_remove == [(old.sha256, old.path.stat().st_size)]
    assert volume.has_copy(old.sha256)

    report = collector(volume).run_once()
    assert report.removed == 1 and report.bytes_freed == dry.bytes_freed
    assert not volume.has_copy(old.sha256) and volume.has_copy(young.sha256)
    assert not any((volume.root / TRASH_DIR).iterdir())


def test_gc_racing_a_backup_of_the_same_content_keeps_the_copy(aws, config, volume):
    body = b"popular content" * 200
    copy = orphan(volume, config, body, timedelta(days=2))
    service = make_service(aws, config, volume)

    def backup_of_same_content():  # between GC's scan and its unlink
        response = put(aws, "late/upload.txt", body)
        service.process(created("late/upload.txt", response, len(body), at=NOW))

    gc = collector(volume, now=datetime.now(UTC), after_scan=backup_of_same_content)
    report = gc.run_once()

    assert report.removed == 0 and report.kept_in_use == 1
    volume.verify_copy(copy.sha256, len(body))
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "late/upload.txt")
    assert latest.sha256 == copy.sha256


def test_gc_keeps_a_copy_referenced_after_the_scan_even_with_an_old_mtime(aws, config, volume):
    copy = orphan(volume, config, b"restored reference" * 50, timedelta(days=2))
    journal = Journal(volume.journal_dir)
    record = journal_line_for(copy)

    report = collector(volume, after_scan=lambda: journal.append(record)).run_once()

    assert report.kept_in_use == 1 and volume.has_copy(copy.sha256)


def journal_line_for(copy):
    from agent.records import VersionRecord

    return VersionRecord(
        bucket=BUCKET,
        key="k",
        version_token="v:x",
        order_key="tX",
        event_name="ObjectCreated:Put",
        event_time=NOW.isoformat(),
        backup_time=NOW.isoformat(),
        volume_id="vol-test",
        sha256=copy.sha256,
        size=copy.size,
    )


def test_gc_recovers_a_copy_left_in_its_trash_by_a_crash(aws, config, volume):
    copy = orphan(volume, config, b"half removed" * 50, timedelta(days=2))
    Journal(volume.journal_dir).append(journal_line_for(copy))
    trash = volume.root / TRASH_DIR
    trash.mkdir()
    os.rename(copy.path, trash / copy.path.name)  # crashed after step 1

    collector(volume).run_once()

    volume.verify_copy(copy.sha256)
    assert not any(trash.iterdir())


def test_a_deduplicating_backup_survives_gc_taking_the_copy_mid_commit(
    aws, config, volume, monkeypatch
):
    body = b"raced" * 100
    copy = orphan(volume, config, body, timedelta(days=2))
    real_utime = os.utime

    def gc_got_there_first(path, *args, **kwargs):
        os.unlink(path)  # GC renamed it away between exists() and utime()
        return real_utime(path, *args, **kwargs)

    monkeypatch.setattr("agent.storage.volume.os.utime", gc_got_there_first)
    from agent.runtime.wiring import compression_settings

    again = volume.write_copy([body], compression_settings(config))
    monkeypatch.undo()
    assert not again.deduplicated
    volume.verify_copy(copy.sha256, len(body))


def test_retention_expiring_a_version_while_it_is_recorded_again_leaves_its_copy(
    aws, config, volume
):
    """A second S3 notification of an old version, in another message, reaches an agent with
    nothing in memory (a restart): its journal line is written, retention runs to the end
    (its ``expired`` note after that line, the item deleted), then the backup's conditional
    write recreates the item. The ledger named v1 on this volume, the journal had forgotten
    it, and gc freed its copy (a review, 2026-12-02). Now the journal agrees with the
    ledger again, and the copy stays."""
    enable_versioning(aws)
    first = make_service(aws, config, volume, clock=FakeClock(NOW))
    r1 = put(aws, "doc.txt", b"version one" * 100)
    e1 = created("doc.txt", r1, 1100, at=T0, sequencer=f"{1:016X}")
    first.process(e1)
    r2 = put(aws, "doc.txt", b"version two" * 100)
    first.process(created("doc.txt", r2, 1100, at=T0 + timedelta(days=1), sequencer=f"{2:016X}"))
    ledger = Ledger(aws.dynamodb, TABLE)
    token = "v:" + r1["VersionId"]
    v1 = ledger.get_version(BUCKET, "doc.txt", token)
    assert v1 is not None and v1.sha256
    retention = Retention(
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        policy=RetentionPolicy(keep_last_versions=1),
        buckets=[BUCKET],
        clock=FakeClock(T0 + timedelta(days=10)),
    )
    again = make_service(aws, config, volume, clock=FakeClock(NOW))
    real_write = again.ledger.write
    reports = []

    def write_after_retention(record):
        if not reports:
            reports.append(retention.run_once())
        return real_write(record)

    again.ledger.write = write_after_retention
    with delivering(Delivery("second-message", 1)):
        again.process(e1)
    assert reports[0].expired == 1

    GarbageCollector(
        volume=volume,
        journal=Journal(volume.journal_dir),
        grace_period=timedelta(hours=1),
        clock=FakeClock(NOW + timedelta(days=2)),
    ).run_once()

    assert ledger.get_version(BUCKET, "doc.txt", token) is not None  # the write's item
    assert volume.has_copy(v1.sha256)
    assert token in {r.version_token for r in Journal(volume.journal_dir).read_all()}


def test_a_collection_never_unlinks_a_fresh_copy_another_collection_moved_onto_its_trash(
    aws, config, volume, monkeypatch
):
    """Two runs sharing gc/ (runs hold the gc lock; this is the backstop): A moves an old
    orphan X to gc/; a backup of X's bytes writes a fresh X and records it; A, putting X
    back, finds the fresh copy in place; B, which listed X before, moves the fresh X onto
    A's trash file; A must not unlink it, and B must put it back."""
    body = b"shared content" * 300
    old = orphan(volume, config, body, timedelta(days=2))
    final = volume.copy_path(old.sha256)
    service = make_service(aws, config, volume)
    a = threading.current_thread()
    b_scanned, b_go, b_moved, a_done = (threading.Event() for _ in range(4))
    real_rename, real_exists = os.rename, pathlib.Path.exists
    raced: list[str] = []

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if pathlib.Path(dst).parent.name != TRASH_DIR:
            return
        if threading.current_thread() is a and not raced:
            raced.append("backed up")  # X is in A's trash: the backup finds no copy
            response = put(aws, "new/upload.bin", body)
            service.process(created("new/upload.bin", response, len(body), at=NOW))
        elif threading.current_thread() is not a:
            b_moved.set()  # B holds the fresh copy in gc/ now; it settles after A
            a_done.wait(10)

    def exists(self, *args, **kwargs):
        found = real_exists(self, *args, **kwargs)
        if threading.current_thread() is a and self == final and found and raced == ["backed up"]:
            raced.append("fresh copy found")  # A's put-back finds the fresh copy in place
            b_go.set()
            b_moved.wait(10)
        return found

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(pathlib.Path, "exists", exists)
    errors: list[BaseException] = []

    def b_listed_x() -> None:  # B's scan found X an old orphan: it waits for A mid-way
        b_scanned.set()
        b_go.wait(10)

    def run_b() -> None:
        try:
            collector(volume, now=datetime.now(UTC), after_scan=b_listed_x).run_once()
        except BaseException as exc:  # reported by the assertions below
            errors.append(exc)

    thread = threading.Thread(target=run_b)
    thread.start()
    try:
        assert b_scanned.wait(10)
        report = collector(volume, now=datetime.now(UTC)).run_once()
    finally:
        a_done.set()
        thread.join(10)
    monkeypatch.undo()

    assert raced == ["backed up", "fresh copy found"] and b_moved.is_set()
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "new/upload.bin")
    assert latest is not None and latest.sha256 == old.sha256
    assert volume.has_copy(old.sha256), "the copy of a version just recorded is gone"
    volume.verify_copy(old.sha256, len(body))
    assert report.kept_in_use == 1 and report.removed == 0
    assert errors == []  # B found its trash file and put it back


def test_a_trash_file_that_vanished_is_left_to_whoever_took_it(aws, config, volume, monkeypatch):
    old = orphan(volume, config, b"taken by another run" * 50, timedelta(days=2))
    real_rename = os.rename

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if pathlib.Path(dst).parent.name == TRASH_DIR:
            os.unlink(dst)  # another run settled it between this run's rename and its look

    monkeypatch.setattr(os, "rename", rename)
    report = collector(volume).run_once()

    assert (report.removed, report.kept_in_use, report.bytes_freed) == (0, 0, 0)
    assert not volume.has_copy(old.sha256)
