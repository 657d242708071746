"""Retention under pressure (`retention.when_full`): make room when the volume is full and
cannot grow.

Opt-in. The daemon runs it while the consumer is paused for want of room on a ready volume
and growing is off or capped (docs/runbooks.md, "The disk is full"). The order is stated and
safe:

1. **the normal rules, early**: what `retention:` would expire at its next scheduled run;
2. **the stricter minimums**, oldest version first (by when it was created): versions that
   `retention.when_full` (`keep_last_versions`, at least 1; `keep_younger_than`) does not
   keep, only until the stored bytes expired reach what is needed to resume;
3. **garbage collection** with `when_full.gc_grace_period`, which frees the copies.

The whole run holds the volume's ``gc`` job lock (`exclusive`, given by the wiring), as
`backup-agent gc` and the scheduled gc do: collections never overlap (two at once could
lose a copy a backup just recorded: agent/lifecycle/gc.py). While another gc run holds it,
nothing is expired and the check waits for its next turn: expiring without collecting would
free nothing, and the next check would expire more for the same bytes.

Never expired: the current version of a live key, the version S3 served last of a deleted
key, the newest `keep_last_versions` versions of any key (`RetentionPolicy.kept` decides,
as for normal retention). Every version expired is named however the run ends: in the log
as it goes (``retention.when_full_expired``, one event per version), then in the report,
which the ``retention.when_full`` event and `on_report` (the daemon: the alert and the audit
trail) get even when a later step raised (the collection, the ledger), with the error.
Copies shared by a kept version (deduplicated content) are not freed: the GC report, not the
expired bytes, says what the volume got back; a pause that goes on runs this again at the
next check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import datetime

import structlog

from agent.config import RetentionConfig
from agent.lifecycle.context import JobBusy
from agent.lifecycle.gc import GcReport
from agent.lifecycle.retention import Retention, RetentionPolicy, RetentionReport, policy_view
from agent.pipeline.pause import VolumeCheck
from agent.records import VersionRecord, parse_time

log = structlog.get_logger("agent.retention")


@dataclass(frozen=True, slots=True)
class Removed:
    """One version expired under pressure, as the report names it."""

    bucket: str
    key: str
    version_id: str | None
    version_token: str
    created: str
    stored_size: int
    stage: str  # "rules" (the normal policy, early) or "when_full" (the stricter minimums)

    def line(self) -> str:
        return (
            f"s3://{self.bucket}/{self.key} version {self.version_id or 'null'}"
            f" of {self.created} ({self.stored_size} bytes stored; {self.stage})"
        )


@dataclass
class PressureReport:
    needed_bytes: int
    removed: list[Removed] = field(default_factory=list)
    expired_stored_bytes: int = 0
    bytes_freed: int = 0  # by the garbage collection that followed
    gc: GcReport | None = None
    failed: BaseException | None = None  # what ended the run early (it went on raising)

    @property
    def error(self) -> str | None:
        return None if self.failed is None else f"{type(self.failed).__name__}: {self.failed}"

    def summary(self) -> str:
        head = (
            f"retention.when_full expired {len(self.removed)} version(s),"
            f" {self.expired_stored_bytes} bytes stored, to make {self.needed_bytes} bytes of"
            f" room; garbage collection freed {self.bytes_freed} bytes"
        )
        if self.failed is not None:
            head += f"; then it failed ({self.error})"
            if self.gc is None and self.removed:
                head += ": the copies of the versions expired stay until a gc run frees them"
        return "\n".join([head, *(r.line() for r in self.removed)])


def pressure_policy(config: RetentionConfig) -> RetentionPolicy:
    """The stricter minimums of `retention.when_full` (it must be set)."""
    assert config.when_full is not None
    return RetentionPolicy(
        keep_last_versions=config.when_full.keep_last_versions,
        keep_younger_than=config.when_full.keep_younger_than,
        keep_deleted=None,  # a deleted key keeps the version S3 served last
    )


class PressureRetention:
    """Expires in the stated order until `needed_bytes` of stored bytes are expired, then
    runs `collect` (a GarbageCollector's run_once with the pressure grace period), all under
    `exclusive` (the volume's gc job lock: it raises JobBusy while another gc run holds it)."""

    def __init__(
        self,
        *,
        rules: Retention,
        strict: RetentionPolicy,
        collect: Callable[[], GcReport],
        exclusive: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self.rules = rules
        self.strict = strict
        self.collect = collect
        self.exclusive = exclusive

    def run(
        self, needed_bytes: int, on_report: Callable[[PressureReport], None] | None = None
    ) -> PressureReport:
        """The report; `on_report` gets it however the run ends (an error is raised on after
        it, and named in it). JobBusy, before anything is expired and with no report, while
        another gc run holds the volume."""
        with self.exclusive():
            report = PressureReport(needed_bytes=max(0, needed_bytes))
            try:
                self._run(report)
            except BaseException as exc:
                report.failed = exc
                raise
            finally:
                self._finished(report, on_report)
            return report

    def _run(self, report: PressureReport) -> None:
        now = self.rules.clock()
        rules = RetentionReport()
        try:
            self.rules.run_once(report=rules)  # the normal rules, early
        finally:  # what they expired before an error too
            for record in rules.expired_records:
                self._note(report, record, "rules")
        for record in self._candidates(now):
            if report.expired_stored_bytes >= report.needed_bytes:
                break
            self.rules.expire(record, now)
            self._note(report, record, "when_full")
        if report.removed:
            report.gc = self.collect()
            report.bytes_freed = report.gc.bytes_freed

    def _finished(
        self, report: PressureReport, on_report: Callable[[PressureReport], None] | None
    ) -> None:
        emit = log.error if report.failed is not None else log.warning
        emit(
            "retention.when_full",
            needed_bytes=report.needed_bytes,
            expired=len(report.removed),
            expired_stored_bytes=report.expired_stored_bytes,
            bytes_freed=report.bytes_freed,
            versions=[r.line() for r in report.removed],
            error=report.error,
        )
        if on_report is None:
            return
        try:
            on_report(report)
        except Exception:  # the run's own outcome (or error) goes on; the log names it all
            log.exception("retention.when_full_report_failed")

    def _keys(self) -> list[VersionRecord]:
        return [latest for b in self.rules.buckets for latest in self.rules.ledger.keys(b)]

    def _candidates(self, now: datetime) -> list[VersionRecord]:
        """Versions the stricter minimums do not keep, oldest first."""
        found: list[VersionRecord] = []
        for latest in self._keys():
            versions = self.rules.ledger.versions(latest.bucket, latest.key)
            kept = policy_view(self.strict, versions, latest, now)
            if not latest.deleted and latest.version_token not in kept:
                continue  # never the current version of a live key (RetentionPolicy keeps it)
            found.extend(  # this volume's only: expiring another's frees nothing here
                r
                for r in versions
                if r.version_token not in kept
                and r.version_token != latest.version_token
                and self.rules.acts_on(r)
            )
        return sorted(found, key=lambda r: (parse_time(r.event_time), r.order_key))

    def _note(self, report: PressureReport, record: VersionRecord, stage: str) -> None:
        size = record.stored_size or 0
        report.expired_stored_bytes += size
        removed = Removed(
            bucket=record.bucket,
            key=record.key,
            version_id=record.version_id,
            version_token=record.version_token,
            created=record.event_time,
            stored_size=size,
            stage=stage,
        )
        report.removed.append(removed)
        log.warning("retention.when_full_expired", **asdict(removed))


class PressureCheck:
    """The daemon's scheduled check (every `when_full.check_every`): runs `PressureRetention`
    only while the consumer is paused, the volume is ready and measured with less than
    floor + `resume_headroom_bytes` free, and the volume cannot grow (`can_grow` False:
    auto-grow off, capped, or waiting out EBS's 6 hours), and no other gc run is under way."""

    def __init__(
        self,
        *,
        check: VolumeCheck,
        paused: Callable[[], str | None],
        can_grow: Callable[[], bool],
        make: Callable[[], PressureRetention],
        on_report: Callable[[PressureReport], None],
    ) -> None:
        self.check = check
        self.paused = paused
        self.can_grow = can_grow
        self.make = make
        self.on_report = on_report

    def needed_bytes(self) -> int | None:
        """Bytes to free for the consumer to resume, or None when this is no case for it."""
        if self.paused() is None:
            return None
        verdict = self.check.check(to_resume=True)
        # room enough, no volume to measure, or paused for something else than bytes (mounted
        # read-only, no inode left, a failing write): expiring versions would not help, an
        # operator does (docs/runbooks.md)
        if verdict.ok or verdict.headroom is None or not verdict.for_bytes:
            return None
        return self.check.resume_headroom - verdict.headroom

    def __call__(self) -> PressureReport | None:
        needed = self.needed_bytes()
        if needed is None:
            return None
        if self.can_grow():
            log.info("retention.when_full_waits", reason="the volume can still grow")
            return None
        try:
            return self.make().run(needed, self.on_report)
        except JobBusy as busy:  # nothing expired: the next check tries again
            log.info("retention.when_full_waits", reason=str(busy))
            return None
