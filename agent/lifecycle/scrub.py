"""Scrub: re-read stored copies, find rot, heal it from S3.

Each run verifies the next share of the copies (in SHA-256 order, continuing after the
cursor kept in ``state/scrub.json`` on the volume): ``scrub.share_per_run`` of them, or
``1 / scrub.cycle_days`` when unset (one run a day: a full cycle in ``cycle_days``).
`Volume.verify_copy` decompresses each copy and checks its SHA-256.

A bad copy is:

1. reported: ``scrub.corrupt`` logged at error level and the `on_alert` hook called;
2. moved aside to ``quarantine/<sha256>.zst.<UTC time>`` (kept for inspection);
3. fetched again from S3 through `BackupService.process` when a journal record names a
   version that still exists (by VersionId, or with ``IfMatch`` on the eTag for an
   unversioned object), newest record first; the fresh copy must hash to the same
   SHA-256;
4. recorded: a journal note ``{"kind": "scrub", "outcome": "healed"|"unrecoverable"}``
   and ``scrub.healed`` / ``scrub.unrecoverable`` logged (the latter also alerted).

Scrub takes no gc lock (its runs are long), so garbage collection may take a copy while it
is checked. A copy gone before it is read was removed, not lost: nothing is reported. A bad
verdict counts only while the copy's name still holds the file that was checked (st_dev,
st_ino, the file held open meanwhile so that its inode is not reused), looked at again just
before reporting and just before quarantining: gc may have put its copy back, or a backup
written the same bytes afresh; that copy is left for a later run to check.

Each run also reads the whole journal once: a line that is not a valid record is reported
(`ScrubReport.rejected`, ``record.rejected`` at error), never a crash.
"""

from __future__ import annotations

import bisect
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.config import ScrubConfig
from agent.errors import BackupAgentError, IntegrityError
from agent.events import EventKind, ObjectEvent
from agent.lifecycle.context import Clock, LifecycleContext, StateFile, utc_now
from agent.lifecycle.gc import stored_copies
from agent.pipeline.backup import BackupService
from agent.records import Rejection, VersionRecord, parse_time
from agent.stats import Stats
from agent.storage.journal import Journal
from agent.storage.volume import Volume, fsync_directory

log = structlog.get_logger("agent.scrub")

CURSOR_NAME = "scrub.json"
QUARANTINE_DIR = "quarantine"

ScrubAlertHook = Callable[[str, dict[str, Any]], None]
"""on_alert(event, details): a corrupt or unrecoverable copy; the daemon alerts on it."""


@dataclass
class ScrubReport:
    total: int = 0
    checked: int = 0
    bytes_read: int = 0
    corrupt: int = 0
    healed: int = 0
    unrecoverable: int = 0
    cycle_completed: bool = False
    bad: list[str] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)  # journal lines skipped
    healed_records: list[VersionRecord] = field(default_factory=list)  # the versions re-fetched


class Scrubber:
    def __init__(
        self,
        *,
        volume: Volume,
        journal: Journal,
        service: BackupService,
        settings: ScrubConfig,
        stats: Stats | None = None,
        clock: Clock = utc_now,
        on_alert: ScrubAlertHook | None = None,
    ) -> None:
        self.volume = volume
        self.journal = journal
        self.service = service
        self.settings = settings
        self.stats = stats or Stats()
        self.clock = clock
        self.on_alert = on_alert
        self.cursor = StateFile(volume, CURSOR_NAME)
        self.quarantine_dir = volume.root / QUARANTINE_DIR
        self._records: dict[str, list[VersionRecord]] | None = None

    @classmethod
    def from_context(
        cls, ctx: LifecycleContext, on_alert: ScrubAlertHook | None = None
    ) -> Scrubber:
        return cls(
            volume=ctx.volume,
            journal=ctx.journal,
            service=ctx.service,
            settings=ctx.config.scrub,
            stats=ctx.stats,
            on_alert=on_alert,
        )

    @property
    def share(self) -> float:
        return self.settings.share_per_run or min(1.0, 1.0 / self.settings.cycle_days)

    def run_once(self) -> ScrubReport:
        self.volume.ensure_ready()
        self._records = None
        now = self.clock()
        state = self.cursor.load() or {}
        cycle_started = state.get("cycle_started_at") or now.isoformat()
        digests = [sha for sha, _ in stored_copies(self.volume)]
        report = ScrubReport(total=len(digests))
        start = bisect.bisect_right(digests, state["after"]) if state.get("after") else 0
        batch = digests[start : start + math.ceil(len(digests) * self.share)]
        for sha in batch:
            self.check(sha, report)
        after: str | None = batch[-1] if batch else state.get("after")
        if start + len(batch) >= len(digests):
            report.cycle_completed = True
            self._cycle_completed(cycle_started, now)
            after, cycle_started = None, now.isoformat()
        self.cursor.save(
            {"after": after, "cycle_started_at": cycle_started, "last_run_at": now.isoformat()}
        )
        if self._records is None:  # no copy needed healing: the journal is checked all the same
            for _record in self.journal.read_all():
                pass
        report.rejected = self.journal.rejections.all()
        log.info(
            "scrub.finished",
            total=report.total,
            checked=report.checked,
            bytes_read=report.bytes_read,
            corrupt=report.corrupt,
            healed=report.healed,
            unrecoverable=report.unrecoverable,
            cycle_completed=report.cycle_completed,
        )
        return report

    def _cycle_completed(self, started: str, now: Any) -> None:
        days = (now - parse_time(started)).total_seconds() / 86400
        log.info("scrub.cycle_completed", started_at=started, days=round(days, 2))
        if days > self.settings.cycle_days:
            log.warning("scrub.cycle_late", days=round(days, 2), target=self.settings.cycle_days)

    # -- one copy --------------------------------------------------------------------

    def check(self, sha: str, report: ScrubReport) -> None:
        try:
            self._check(sha, report)
        finally:
            report.checked += 1
            self.stats.count("scrub.checked")

    def _check(self, sha: str, report: ScrubReport) -> None:
        # Held open (O_PATH: nothing is read through it, a FIFO does not block) until the
        # verdict is acted on, so its inode is not freed and reused by a fresh copy meanwhile.
        try:
            held = os.open(self.volume.copy_path(sha), os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # removed by garbage collection since the listing
        try:
            checked = os.fstat(held)
            try:
                verified = self.volume.verify_copy(sha, missing_ok=True)
            except IntegrityError as exc:
                if self._still_there(sha, checked):
                    self._on_corrupt(sha, str(exc), report, checked)
                return
        finally:
            os.close(held)
        if not verified:
            return  # removed by garbage collection between the listing and the read
        report.bytes_read += checked.st_size
        self.stats.count("scrub.bytes_read", checked.st_size)

    def _still_there(self, sha: str, checked: os.stat_result) -> bool:
        """Does the copy's name still hold the file that was checked? Not when garbage
        collection took it meanwhile, or a backup (or gc, putting its own back) put another
        file there: the verdict is not that file's."""
        try:
            now = self.volume.copy_path(sha).lstat()
        except FileNotFoundError:
            log.info("scrub.skipped", sha256=sha, reason="removed during the check")
            return False
        if (now.st_dev, now.st_ino) != (checked.st_dev, checked.st_ino):
            log.info("scrub.skipped", sha256=sha, reason="replaced during the check")
            return False
        return True

    def _on_corrupt(
        self, sha: str, reason: str, report: ScrubReport, checked: os.stat_result | None = None
    ) -> None:
        report.corrupt += 1
        report.bad.append(sha)
        self.stats.count("scrub.corrupt")
        log.error("scrub.corrupt", sha256=sha, reason=reason)
        self._alert("scrub.corrupt", {"sha256": sha, "reason": reason})
        moved_to = self.quarantine(sha, checked)
        record = self.heal(sha)
        outcome = "healed" if record else "unrecoverable"
        note: dict[str, Any] = {
            "outcome": outcome,
            "sha256": sha,
            "reason": reason,
            "quarantined": str(moved_to) if moved_to else None,
            "at": self.clock().isoformat(),
        }
        if record is not None:
            note.update(bucket=record.bucket, key=record.key, version_token=record.version_token)
        self.journal.append_note("scrub", note)
        if record is not None:
            report.healed += 1
            report.healed_records.append(record)
            self.stats.count("scrub.healed")
            log.info("scrub.healed", sha256=sha, bucket=record.bucket, key=record.key)
        else:
            report.unrecoverable += 1
            self.stats.count("scrub.unrecoverable")
            log.error("scrub.unrecoverable", sha256=sha)
            self._alert("scrub.unrecoverable", {"sha256": sha, "reason": reason})

    def quarantine(self, sha: str, checked: os.stat_result | None = None) -> Any:
        """Move a bad copy to quarantine/ (never deleted by the agent); given `checked`, only
        while the copy's name still holds that file (None otherwise)."""
        if checked is not None and not self._still_there(sha, checked):
            return None
        self.quarantine_dir.mkdir(exist_ok=True)
        stamp = self.clock().strftime("%Y%m%dT%H%M%SZ")
        target = self.quarantine_dir / f"{sha}.zst.{stamp}"
        try:
            os.rename(self.volume.copy_path(sha), target)
        except FileNotFoundError:
            return None
        fsync_directory(self.quarantine_dir)
        return target

    def heal(self, sha: str) -> VersionRecord | None:
        """Fetch the content again from the newest version that still has it."""
        for record in reversed(self._records_of(sha)):
            try:
                result = self.service.process(event_for(record))
            except BackupAgentError as exc:
                log.warning("scrub.refetch_failed", sha256=sha, key=record.key, error=str(exc))
                continue
            if result.copy is not None and result.copy.sha256 == sha:
                return record
            log.warning(
                "scrub.refetch_mismatch",
                sha256=sha,
                key=record.key,
                outcome=result.outcome.value,
                got=result.copy.sha256 if result.copy else None,
            )
        return None

    def _records_of(self, sha: str) -> list[VersionRecord]:
        if self._records is None:
            records: dict[str, list[VersionRecord]] = defaultdict(list)
            for record in self.journal.read_all():
                if record.sha256 and not record.deleted:
                    records[record.sha256].append(record)
            self._records = records
        return self._records.get(sha, [])

    def _alert(self, event: str, details: dict[str, Any]) -> None:
        if self.on_alert is None:
            return
        try:
            self.on_alert(event, details)
        except Exception as exc:  # noqa: BLE001 - an alert sink must never stop the scrub
            log.error("scrub.alert_failed", error=str(exc))


def event_for(record: VersionRecord) -> ObjectEvent:
    """The event that produced `record` (same version token), to fetch that version again."""
    return ObjectEvent(
        kind=EventKind.CREATED,
        bucket=record.bucket,
        key=record.key,
        event_name=record.event_name,
        event_time=parse_time(record.event_time),
        version_id=record.version_id,
        etag=record.etag,
        size=record.size,
        sequencer=record.sequencer,
    )
