"""Garbage collection: remove copies that no record references any more.

References come from the volume's journal (replayed with expiries applied): every
record is journaled before it reaches DynamoDB and every expiry is journaled before
the DynamoDB item is deleted, so the journal's references are a superset of the
ledger's, and the volume alone decides.

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
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import structlog

from agent.lifecycle.context import Clock, LifecycleContext, utc_now
from agent.records import Rejection
from agent.stats import Stats
from agent.storage.journal import Journal, JournalPosition
from agent.storage.volume import Volume, fsync_directory

log = structlog.get_logger("agent.gc")

TRASH_DIR = "gc"
COPY_NAME = re.compile(r"^[0-9a-f]{64}\.zst$")


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
    ) -> None:
        self.volume = volume
        self.journal = journal
        self.grace_period = grace_period
        self.stats = stats or Stats()
        self.clock = clock
        self.after_scan = after_scan  # test hook: runs between the scan and the removals
        self.trash_dir = volume.root / TRASH_DIR

    @classmethod
    def from_context(cls, ctx: LifecycleContext) -> GarbageCollector:
        return cls(
            volume=ctx.volume,
            journal=ctx.journal,
            grace_period=ctx.config.gc.grace_period,
            stats=ctx.stats,
        )

    def run_once(self, *, dry_run: bool = False) -> GcReport:
        self.volume.ensure_ready()
        report = GcReport(dry_run=dry_run)
        position = self.journal.position()
        referenced = {r.sha256 for r in self.journal.read_all() if r.sha256}
        report.rejected = self.journal.rejections.all()
        # A line rejected as a record may still name its copy: kept, for a person to judge.
        referenced |= {r.sha256 for r in report.rejected if r.sha256}
        cutoff = (self.clock() - self.grace_period).timestamp()
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
        stat = trash.stat()
        if stat.st_mtime > cutoff or self._referenced_since(sha, position):
            self._restore(sha, trash)
            report.kept_in_use += 1
            log.info("gc.kept_in_use", sha256=sha)
            return
        trash.unlink()
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

    def _restore(self, sha: str, trash: Path) -> None:
        final = self.volume.copy_path(sha)
        final.parent.mkdir(exist_ok=True)
        if final.exists():  # a backup wrote the same content afresh meanwhile
            trash.unlink()
        else:
            os.rename(trash, final)
            fsync_directory(final.parent)

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
