"""Retention under pressure (`retention.when_full`, issue 17): the normal rules early, then the
oldest versions the stricter minimums allow, only until the room needed; never a current
version, never below one version per key; then GC; the report names every version removed."""

from __future__ import annotations

import itertools
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from agent.config import RetentionConfig, RetentionWhenFullConfig
from agent.errors import BackupAgentError
from agent.lifecycle.context import JobBusy, job_lock
from agent.lifecycle.gc import GarbageCollector, GcReport
from agent.lifecycle.pressure import (
    PressureCheck,
    PressureReport,
    PressureRetention,
    pressure_policy,
)
from agent.lifecycle.retention import Retention, RetentionPolicy
from agent.pipeline.pause import VolumeCheck
from agent.runtime.wiring import lifecycle_context, pressure_retention
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import BUCKET, TABLE, make_config
from tests.support.aws_hooks import Fault, inject
from tests.support.clock import FakeClock
from tests.support.lifecycle import created, deleted, enable_versioning, make_service, put

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=10)
KiB = 1 << 10


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def back_up(aws, config, volume, key, days):
    """One incompressible 8 KiB version per day in `days`; their version ids."""
    service = make_service(aws, config, volume, clock=FakeClock(NOW))
    ids = []
    for i, d in enumerate(days):
        response = put(aws, key, os.urandom(8 * KiB))
        service.process(
            created(key, response, 8 * KiB, at=day(d), sequencer=f"{d * 1000 + i:016X}")
        )
        ids.append(response["VersionId"])
    return service, ids


def pressure(aws, volume, *, rules: RetentionPolicy, strict: RetentionPolicy):
    retention = Retention(
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        policy=rules,
        buckets=[BUCKET],
        clock=FakeClock(day(10)),
    )
    collector = GarbageCollector(
        volume=volume,
        journal=Journal(volume.journal_dir),
        grace_period=timedelta(hours=1),
        clock=FakeClock(NOW + timedelta(hours=2)),  # the copies were written at NOW
    )
    return PressureRetention(rules=retention, strict=strict, collect=collector.run_once)


def stored(aws, key, version_id) -> int:
    record = Ledger(aws.dynamodb, TABLE).get_version(BUCKET, key, "v:" + version_id)
    assert record is not None and record.stored_size
    return record.stored_size


def versions(aws, key) -> set[str | None]:
    return {r.version_id for r in Ledger(aws.dynamodb, TABLE).versions(BUCKET, key)}


def test_the_rules_go_first_then_the_oldest_versions_only_until_the_room_needed(
    aws, config, volume
):
    enable_versioning(aws)
    _, a = back_up(aws, config, volume, "a.txt", [0, 2, 4, 8])
    _, b = back_up(aws, config, volume, "b.txt", [1, 9])
    needed = stored(aws, "a.txt", a[0]) + stored(aws, "b.txt", b[0]) + 1

    report = pressure(
        aws,
        volume,
        rules=RetentionPolicy(keep_last_versions=3),
        strict=RetentionPolicy(keep_last_versions=1),
    ).run(needed)

    # a v1 by the normal rules (4th newest); then b v1 (day 1), a v2 (day 2): enough
    assert [(r.key, r.version_id, r.stage) for r in report.removed] == [
        ("a.txt", a[0], "rules"),
        ("b.txt", b[0], "when_full"),
        ("a.txt", a[1], "when_full"),
    ]
    assert report.expired_stored_bytes >= needed
    assert versions(aws, "a.txt") == {a[2], a[3]} and versions(aws, "b.txt") == {b[1]}
    assert report.gc is not None and report.gc.removed == 3
    assert report.bytes_freed == report.expired_stored_bytes
    summary = report.summary()
    assert f"s3://{BUCKET}/a.txt version {a[1]}" in summary and "when_full" in summary


def test_never_a_current_version_nor_the_last_one_of_a_deleted_key(aws, config, volume):
    enable_versioning(aws)
    _, live = back_up(aws, config, volume, "live.txt", [0, 1, 2])
    service, gone = back_up(aws, config, volume, "gone.txt", [0, 1])
    marker = aws.s3.delete_object(Bucket=BUCKET, Key="gone.txt")["VersionId"]
    service.process(deleted("gone.txt", marker, at=day(3), sequencer=f"{3 * 1000:016X}"))

    report = pressure(
        aws,
        volume,
        rules=RetentionPolicy(),  # no normal rule: the stricter minimums alone
        strict=RetentionPolicy(keep_last_versions=1),
    ).run(1 << 40)  # more than can ever be freed

    assert {(r.key, r.version_id) for r in report.removed} == {
        ("live.txt", live[0]),
        ("live.txt", live[1]),
        ("gone.txt", gone[0]),
    }
    assert versions(aws, "live.txt") == {live[2]}  # the current version
    assert versions(aws, "gone.txt") == {gone[1], marker}  # what S3 served last, restorable
    ledger = Ledger(aws.dynamodb, TABLE)
    last = ledger.get_version(BUCKET, "gone.txt", "v:" + gone[1])
    assert last is not None and volume.has_copy(last.sha256)


def test_keep_younger_than_still_protects_recent_versions_under_pressure(aws, config, volume):
    enable_versioning(aws)
    _, a = back_up(aws, config, volume, "a.txt", [0, 7, 8, 9])
    when_full = RetentionWhenFullConfig(keep_younger_than=timedelta(days=2))
    strict = pressure_policy(RetentionConfig(when_full=when_full))
    assert strict.keep_last_versions == 1 and strict.keep_deleted is None

    report = pressure(aws, volume, rules=RetentionPolicy(), strict=strict).run(1 << 40)

    # v2 was replaced on day 8 (2 days before day 10): no longer protected; v3 (day 9) is
    assert [r.version_id for r in report.removed] == [a[0], a[1]]
    assert versions(aws, "a.txt") == {a[2], a[3]}


def test_nothing_expired_means_no_collection(aws, config, volume):
    enable_versioning(aws)
    back_up(aws, config, volume, "only.txt", [0])
    ran: list[bool] = []
    retention = Retention(
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        policy=RetentionPolicy(keep_last_versions=1),
        buckets=[BUCKET],
        clock=FakeClock(day(10)),
    )

    def collect() -> GcReport:
        ran.append(True)
        return GcReport()

    report = PressureRetention(
        rules=retention, strict=RetentionPolicy(keep_last_versions=1), collect=collect
    ).run(1 << 20)
    assert report.removed == [] and ran == [] and report.bytes_freed == 0


# -- when the daemon's check runs it --------------------------------------------------------


class FakePressure:
    def __init__(self) -> None:
        self.runs: list[int] = []

    def run(self, needed_bytes: int, on_report):
        self.runs.append(needed_bytes)
        report = PressureReport(needed_bytes=needed_bytes)
        on_report(report)
        return report


@pytest.fixture
def ready_volume(tmp_path: Path) -> Volume:
    volume = Volume(tmp_path, min_free_bytes=100 * KiB)
    volume.initialise("vol-test")
    volume.open()
    return volume


def make_check(volume: Volume, *, free: int, paused: str | None, can_grow: bool):
    fake, reports = FakePressure(), []
    check = PressureCheck(
        check=VolumeCheck(volume, resume_headroom=50 * KiB, free_bytes=lambda _root: free),
        paused=lambda: paused,
        can_grow=lambda: can_grow,
        make=lambda: fake,  # type: ignore[arg-type,return-value]
        on_report=reports.append,
    )
    return check, fake, reports


def test_the_check_runs_only_while_paused_for_room_that_growing_cannot_give(ready_volume):
    low = 120 * KiB  # 20 KiB above the floor: 30 KiB short of resuming
    for free, paused, can_grow in [
        (low, None, False),  # not paused
        (200 * KiB, "was low", False),  # room enough to resume: nothing to free
        (low, "low space", True),  # auto-grow may still make room: it goes first
    ]:
        check, fake, reports = make_check(ready_volume, free=free, paused=paused, can_grow=can_grow)
        assert check() is None and fake.runs == [] and reports == []

    check, fake, reports = make_check(ready_volume, free=low, paused="low space", can_grow=False)
    report = check()
    assert fake.runs == [30 * KiB] and reports == [report]


def test_the_check_does_nothing_for_a_volume_that_is_not_there(tmp_path):
    volume = Volume(tmp_path / "unmounted", min_free_bytes=KiB)
    check, fake, _ = make_check(volume, free=0, paused="not ready", can_grow=False)
    assert check() is None and fake.runs == []


@pytest.mark.parametrize("free", [200 * KiB, 120 * KiB], ids=["bytes-to-spare", "short-of-bytes"])
def test_the_check_does_nothing_when_the_pause_is_not_for_bytes(ready_volume, free):
    """A volume mounted read-only pauses the consumer whatever its bytes: no version is
    expired for it (its deletes would fail, and bytes would not let the consumer resume)."""
    check, fake, _ = make_check(ready_volume, free=free, paused="read-only", can_grow=False)

    def read_only(root: Path) -> os.statvfs_result:
        found = os.statvfs(root)
        return os.statvfs_result((*found[:8], found.f_flag | os.ST_RDONLY, found.f_namemax))

    check.check = VolumeCheck(
        ready_volume,
        resume_headroom=50 * KiB,
        free_bytes=lambda _root: free,
        statvfs=read_only,
    )
    verdict = check.check.check(to_resume=True)
    assert not verdict.ok and not verdict.for_bytes
    assert check() is None and fake.runs == []


# -- beside the other gc runs -----------------------------------------------------------------


def wired(aws, volume, backup_root):
    """The pressure run as the daemon wires it, with `retention.when_full` set."""
    config = make_config(backup_root, retention={"when_full": {"keep_last_versions": 1}})
    return pressure_retention(lifecycle_context(config, aws, volume, "vol-test"))


def test_nothing_is_expired_under_pressure_while_another_gc_run_holds_the_volume(
    aws, config, volume, backup_root
):
    """Expiring without collecting frees nothing, and the next check would expire more for
    the same bytes: the check waits for its next turn instead."""
    enable_versioning(aws)
    _, a = back_up(aws, config, volume, "a.txt", [0, 1, 2])
    reports: list[PressureReport] = []
    check = PressureCheck(
        check=VolumeCheck(
            Volume(volume.root, min_free_bytes=100 * KiB),
            resume_headroom=50 * KiB,
            free_bytes=lambda _root: 120 * KiB,
        ),
        paused=lambda: "low space",
        can_grow=lambda: False,
        make=lambda: wired(aws, volume, backup_root),
        on_report=reports.append,
    )

    with job_lock(volume, "gc"), capture_logs() as logs:  # `backup-agent gc`, say
        assert check() is None

    assert versions(aws, "a.txt") == set(a) and reports == []
    [waits] = [e for e in logs if e["event"] == "retention.when_full_waits"]
    assert "another gc run is in progress" in waits["reason"]
    assert check() is not None and versions(aws, "a.txt") == {a[2]}  # its next turn


def test_a_gc_run_is_refused_while_the_pressure_run_collects(aws, config, volume, backup_root):
    enable_versioning(aws)
    back_up(aws, config, volume, "a.txt", [0, 1, 2])
    pressure = wired(aws, volume, backup_root)
    collect, refused = pressure.collect, []

    def collect_while_a_gc_starts() -> GcReport:
        with pytest.raises(JobBusy) as busy, job_lock(volume, "gc"):
            pass  # the scheduled gc, or `backup-agent gc`
        refused.append(str(busy.value))
        return collect()

    pressure.collect = collect_while_a_gc_starts
    report = pressure.run(1 << 40)

    assert len(report.removed) == 2 and report.gc is not None
    assert refused and "another gc run is in progress" in refused[0]
    with job_lock(volume, "gc"):  # released once the pressure run is done
        pass


# -- when a step fails part-way -----------------------------------------------------------------


def test_versions_expired_under_pressure_are_named_when_the_collection_then_fails(
    aws, config, volume
):
    enable_versioning(aws)
    _, a = back_up(aws, config, volume, "a.txt", [0, 1, 2])
    retention = Retention(
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        policy=RetentionPolicy(),
        buckets=[BUCKET],
        clock=FakeClock(day(10)),
    )

    def collect() -> GcReport:
        raise OSError(5, "Input/output error")

    pressure = PressureRetention(
        rules=retention, strict=RetentionPolicy(keep_last_versions=1), collect=collect
    )
    with capture_logs() as logs, pytest.raises(OSError):
        pressure.run(1 << 40)

    assert versions(aws, "a.txt") == {a[2]}  # a[0] and a[1] are expired for good
    expired = [e for e in logs if e["event"] == "retention.when_full_expired"]
    assert [(e["version_id"], e["stage"]) for e in expired] == [
        (a[0], "when_full"),
        (a[1], "when_full"),
    ]
    [end] = [e for e in logs if e["event"] == "retention.when_full"]
    assert end["log_level"] == "error" and end["error"] == "OSError: [Errno 5] Input/output error"
    assert a[0] in " ".join(end["versions"]) and a[1] in " ".join(end["versions"])


def test_versions_the_normal_rules_expired_are_reported_when_the_ledger_then_fails(
    aws, config, volume
):
    """The report `on_report` gets (the daemon alerts and audits it) names what the normal
    rules expired before DynamoDB refused the next delete, and the error."""
    enable_versioning(aws)
    _, a = back_up(aws, config, volume, "a.txt", [0, 1, 2])
    deletes = itertools.count()
    refuse_after_the_first = Fault(
        "DeleteItem", "AccessDeniedException", when=lambda _params: next(deletes) >= 1
    )
    inject(aws.dynamodb, refuse_after_the_first)
    pressure = PressureRetention(
        rules=Retention(
            ledger=Ledger(aws.dynamodb, TABLE),
            journal=Journal(volume.journal_dir),
            policy=RetentionPolicy(keep_last_versions=1),
            buckets=[BUCKET],
            clock=FakeClock(day(10)),
        ),
        strict=RetentionPolicy(keep_last_versions=1),
        collect=GcReport,
    )
    reports: list[PressureReport] = []
    with pytest.raises(BackupAgentError):
        pressure.run(1 << 40, reports.append)

    [report] = reports
    assert [(r.version_id, r.stage) for r in report.removed] == [(a[0], "rules")]
    assert report.gc is None and "AccessDenied" in str(report.error)
    assert "then it failed" in report.summary() and a[0] in report.summary()
