"""Garbage collection: remove copies that no record references any more.

References come from the volume's journal (replayed with expiries applied): every
record is journaled before it reaches DynamoDB and every expiry is journaled before
the DynamoDB item is deleted, so the journal's references are a superset of the
ledger's, and the volume alone decides (the ledger is asked only to retire a fleet
member's lost duplicates, below; unreachable, it is not asked this run).

A journal line rejected as damaged references every copy it may name (`Rejection.digests`:
its ``sha256`` field, or any digest in its bytes when they no longer parse, e.g. one byte of
bit rot), so a damaged record never frees the copy DynamoDB still points at.

A copy is removed only when it is unreferenced AND its mtime is older than
``gc.grace_period`` (a backup that finds its content already stored refreshes the
mtime, see `Volume._commit`). Removing never races a backup of the same content:

1. the copy is renamed into ``gc/`` (atomic; from now on a backup of that content
   does not find it and writes a fresh copy, and a backup that found it a moment
   earlier fails to refresh its mtime and writes a fresh copy too);
2. then its mtime is checked again (a backup refreshed it just before the rename), and
   the journal lines appended since the scan began are searched for its SHA-256;
3. either finds it in use: the copy is renamed back; otherwise it is unlinked.

A crash between 1 and 3 leaves the copy in ``gc/``; the next run checks it again.

Runs never overlap (they share ``gc/``): each holds the volume's ``gc`` job lock
(`backup-agent gc`, the scheduled job, and the collection `retention.when_full` runs). Were
two to run at once, one could move a backup's fresh copy onto the trash file of the other,
which would then unlink it; so, as a backstop, a run unlinks a trash file only while it
still is the file (st_dev, st_ino) it moved there, and a trash file that vanished is left
to the run that took it.

**A fleet member's lost duplicates.** When two members copy the same version (a duplicate
delivery), both journal it and one ledger write wins: the loser's journal line keeps its
copy referenced for ever, though no ledger record names it (docs/fleet.md). So each run
(given the ledger) also asks the ledger, for this volume's journal records written between
the last run's cutoff (less a day) and this run's, whether the version is held here
(`held_by`). A record is a *lost duplicate* only when the ledger holds the version on
another volume for this agent's replica group (`holder_in`): then an ``expired`` note
(``reason: "fleet-duplicate"``, the holder) is journalled, the line no longer references
the copy, and the copy goes by the rules above (unreferenced by every other record of the
journal, older than the grace period, not taken by a backup meanwhile). Never one the
ledger does not know (an in-flight commit, or a version only this volume holds), one it
holds here, or one whose replica group has no holder yet (this member's write may still
add it). The window's start (`state/gc-duplicates.json`) only bounds the look-ups, one
GetItem per record, about once or twice in its life: a record whose copy took over a day
to write and journal is never looked at, and its copy is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import structlog

from agent.errors import BackupAgentError
from agent.holders import held_by
from agent.lifecycle.context import Clock, LifecycleContext, StateFile, utc_now
from agent.records import Rejection, VersionRecord
from agent.stats import Stats
from agent.storage.journal import Journal, JournalPosition
from agent.storage.volume import Volume, fsync_directory

log = structlog.get_logger("agent.gc")

TRASH_DIR = "gc"
COPY_NAME = re.compile(r"^[0-9a-f]{64}\.zst$")
DUPLICATES_STATE = "gc-duplicates.json"
# Records are looked up again this long before the last run's cutoff: a record's backup
# time is taken before its copy is written and journalled.
LOOK_BACK = timedelta(days=1)
LOOKUP_WORKERS = 8
FLEET_DUPLICATE = "fleet-duplicate"


class Holders(Protocol):
    """What gc asks the ledger (agent/storage/ledger.py `Ledger`): a version's record, and
    this agent's replica group (None without replicas)."""

    group: str | None

    def get_version(self, bucket: str, key: str, version_token: str) -> VersionRecord | None: ...


Identity = tuple[str, str, str]  # bucket, key, version token
FileId = tuple[int, int]  # st_dev, st_ino: which file a name holds


def stored_copies(volume: Volume) -> Iterator[tuple[str, Path]]:
    """(sha256, path) of every copy on the volume, in SHA-256 order."""
    if not volume.objects_dir.is_dir():
        return
    for directory in sorted(volume.objects_dir.iterdir()):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if COPY_NAME.match(path.name):
                yield path.name[:64], path


@dataclass
class GcReport:
    copies: int = 0
    referenced: int = 0
    young: int = 0
    removed: int = 0
    bytes_freed: int = 0
    kept_in_use: int = 0
    dry_run: bool = False
    would_remove: list[tuple[str, int]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)  # journal lines skipped
    removed_copies: list[tuple[str, int]] = field(default_factory=list)  # (sha256, bytes)
    duplicates: int = 0  # this volume's records of versions another volume holds: retired


class GarbageCollector:
    def __init__(
        self,
        *,
        volume: Volume,
        journal: Journal,
        grace_period: timedelta,
        stats: Stats | None = None,
        clock: Clock = utc_now,
        after_scan: Callable[[], None] | None = None,
        ledger: Holders | None = None,
        volume_id: str = "",
    ) -> None:
        """`ledger` and `volume_id` given: this volume's lost fleet duplicates are retired
        too (the module's docstring); without them only what the journal forgot goes."""
        self.volume = volume
        self.journal = journal
        self.grace_period = grace_period
        self.stats = stats or Stats()
        self.clock = clock
        self.after_scan = after_scan  # test hook: runs between the scan and the removals
        self.trash_dir = volume.root / TRASH_DIR
        self.ledger = ledger
        self.volume_id = volume_id

    @classmethod
    def from_context(cls, ctx: LifecycleContext) -> GarbageCollector:
        return cls(
            volume=ctx.volume,
            journal=ctx.journal,
            grace_period=ctx.config.gc.grace_period,
            stats=ctx.stats,
            ledger=ctx.ledger,
            volume_id=ctx.volume_id,
        )

    def run_once(self, *, dry_run: bool = False) -> GcReport:
        self.volume.ensure_ready()
        report = GcReport(dry_run=dry_run)
        position = self.journal.position()
        now = self.clock()
        records = list(self.journal.read_all())
        lost = self._lost_duplicates(records, now - self.grace_period, report, dry_run)
        referenced = {
            r.sha256 for r in records if r.sha256 and (r.bucket, r.key, r.version_token) not in lost
        }
        report.rejected = self.journal.rejections.all()
        # A rejected line may still name its copy (as a field, or in its damaged bytes): kept,
        # for a person to judge.
        for rejection in report.rejected:
            referenced |= rejection.digests()
        referenced |= self.journal.torn_digests  # a last line cut short, or its newline rotted
        cutoff = (now - self.grace_period).timestamp()
        if not dry_run:
            self._recover_trash(referenced, position, cutoff, report)
        candidates: list[tuple[str, Path, int]] = []
        for sha, path in self.copies():
            report.copies += 1
            if sha in referenced:
                report.referenced += 1
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if stat.st_mtime > cutoff:
                report.young += 1
                continue
            candidates.append((sha, path, stat.st_size))
        if self.after_scan is not None:
            self.after_scan()
        for sha, path, size in candidates:
            if dry_run:
                report.would_remove.append((sha, size))
                report.bytes_freed += size
                continue
            self._remove(sha, path, position, cutoff, report)
        free = self.volume.usage().free
        log.info(
            "gc.finished",
            copies=report.copies,
            referenced=report.referenced,
            young=report.young,
            removed=report.removed if not dry_run else len(report.would_remove),
            bytes_freed=report.bytes_freed,
            kept_in_use=report.kept_in_use,
            free_bytes=free,
            dry_run=dry_run,
        )
        return report

    def copies(self) -> Iterator[tuple[str, Path]]:
        return stored_copies(self.volume)

    # -- lost fleet duplicates ---------------------------------------------------------------

    def _lost_duplicates(
        self, records: list[VersionRecord], cutoff: datetime, report: GcReport, dry_run: bool
    ) -> set[Identity]:
        """This volume's records, written in the window, of versions the ledger holds on
        another volume for this agent's replica group: journalled as expired (unless
        `dry_run`) and returned, so that they no longer reference their copies."""
        if self.ledger is None or not self.volume_id:
            return set()
        state = StateFile(self.volume, DUPLICATES_STATE)
        since = _since(state.load())
        window = [r for r in records if self._examined(r, since, cutoff)]
        lost: set[Identity] = set()
        try:
            with ThreadPoolExecutor(LOOKUP_WORKERS, thread_name_prefix="gc-lookup") as pool:
                holders = list(pool.map(self._other_holder, window))
        except BackupAgentError as exc:  # the table unreachable: the volume's own rules still run
            log.warning("gc.duplicates_skipped", records=len(window), error=str(exc))
            return set()  # the window stays where it was: the next run looks again
        for record, holder in zip(window, holders, strict=True):
            if holder is None:
                continue
            lost.add((record.bucket, record.key, record.version_token))
            report.duplicates += 1
            log.info(
                "gc.fleet_duplicate",
                bucket=record.bucket,
                key=record.key,
                version_token=record.version_token,
                sha256=record.sha256,
                holder=holder,
                dry_run=dry_run,
            )
            if not dry_run:
                self._retire(record, holder)
        if not dry_run:
            state.save({"examined_before": (cutoff - LOOK_BACK).isoformat()})
            self.stats.count("gc.fleet_duplicates", report.duplicates)
        return lost

    def _examined(self, record: VersionRecord, since: datetime | None, cutoff: datetime) -> bool:
        if not record.sha256 or record.volume_id != self.volume_id:
            return False  # no copy, or a line written before the volume was (re)marked
        try:
            written = datetime.fromisoformat(record.backup_time)
        except ValueError:
            return False
        if written.tzinfo is None:
            return False
        return (since is None or written >= since) and written < cutoff

    def _other_holder(self, record: VersionRecord) -> str | None:
        """The volume the ledger names for this version in this agent's replica group, when
        it is not this one; None when the version is held here, not recorded (in flight, or
        on this volume alone), its group has no holder yet, or the ledger's item names other
        bytes than this copy (an untrusted item must not free the only good copy)."""
        assert self.ledger is not None
        known = self.ledger.get_version(record.bucket, record.key, record.version_token)
        if known is None or held_by(known, self.volume_id):
            return None
        if known.sha256 != record.sha256:
            return None  # the ledger names other bytes (tampered, or a bug): keep this copy
        holder = known.holder_in(self.ledger.group)
        return holder if holder and holder != self.volume_id else None

    def _retire(self, record: VersionRecord, holder: str) -> None:
        self.journal.append_note(
            "expired",
            {
                **record.to_dict(),
                "expired_at": self.clock().isoformat(),
                "reason": FLEET_DUPLICATE,
                "holder": holder,
            },
        )

    def _remove(
        self,
        sha: str,
        path: Path,
        position: JournalPosition | None,
        cutoff: float,
        report: GcReport,
    ) -> None:
        self.trash_dir.mkdir(exist_ok=True)
        trash = self.trash_dir / path.name
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        self._settle(sha, trash, position, cutoff, report)

    def _settle(
        self,
        sha: str,
        trash: Path,
        position: JournalPosition | None,
        cutoff: float,
        report: GcReport,
    ) -> None:
        """The copy is out of reach now: look once more, then unlink or put it back."""
        try:
            stat = trash.lstat()
        except FileNotFoundError:
            log.warning("gc.trash_vanished", sha256=sha)
            return
        moved = (stat.st_dev, stat.st_ino)
        if stat.st_mtime > cutoff or self._referenced_since(sha, position):
            self._restore(sha, trash, moved)
            report.kept_in_use += 1
            log.info("gc.kept_in_use", sha256=sha)
            return
        if not self._discard(sha, trash, moved):
            return
        fsync_directory(self.trash_dir)
        report.removed += 1
        report.bytes_freed += stat.st_size
        report.removed_copies.append((sha, stat.st_size))
        self.stats.count("gc.removed")
        self.stats.count("gc.bytes_freed", stat.st_size)
        log.info("gc.removed", sha256=sha, bytes=stat.st_size)

    def _referenced_since(self, sha: str, position: JournalPosition | None) -> bool:
        return any(
            "kind" not in line and line.get("sha256") == sha
            for line in self.journal.read_since(position)
        )

    def _restore(self, sha: str, trash: Path, moved: FileId | None = None) -> None:
        final = self.volume.copy_path(sha)
        final.parent.mkdir(exist_ok=True)
        if final.exists():  # a backup wrote the same content afresh meanwhile
            self._discard(sha, trash, moved)
            return
        try:
            os.rename(trash, final)
        except FileNotFoundError:
            log.warning("gc.trash_vanished", sha256=sha)
            return
        fsync_directory(final.parent)

    def _discard(self, sha: str, trash: Path, moved: FileId | None) -> bool:
        """Unlink `trash` if it still is the file this run moved there (`moved`; None: a
        crashed run's, whatever is there). False when it vanished, or holds another file:
        another run's, which may be a backup's fresh copy; that run settles it."""
        try:
            found = trash.lstat()
            if moved is not None and (found.st_dev, found.st_ino) != moved:
                log.warning("gc.trash_replaced", sha256=sha)
                return False
            trash.unlink()
        except FileNotFoundError:
            log.warning("gc.trash_vanished", sha256=sha)
            return False
        return True

    def _recover_trash(
        self,
        referenced: set[str],
        position: JournalPosition | None,
        cutoff: float,
        report: GcReport,
    ) -> None:
        """Copies a crashed run left in gc/: put back if in use, else finish removing."""
        if not self.trash_dir.is_dir():
            return
        for trash in sorted(self.trash_dir.iterdir()):
            if not COPY_NAME.match(trash.name):
                continue
            sha = trash.name[:64]
            log.info("gc.recovering", sha256=sha)
            if sha in referenced:
                self._restore(sha, trash)
                continue
            with contextlib.suppress(FileNotFoundError):
                self._settle(sha, trash, position, cutoff, report)


def _since(state: dict[str, object] | None) -> datetime | None:
    """Where the last run's window ended (less LOOK_BACK); None: look at every record."""
    text = (state or {}).get("examined_before")
    try:
        since = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return since if since is not None and since.tzinfo is not None else None
