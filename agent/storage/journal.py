"""The volume's own record of every version, so the volume alone can be restored.

Append-only JSON lines in daily segments (``journal/YYYY-MM-DD.jsonl``). Each append
is written whole and fsynced before the DynamoDB write, so a version the ledger knows
is always in the journal too. Replaying the journal (`read_all`) rebuilds the ledger.
Appends that finish together share one fsync (group commit, `Journal._commit`): an
append still returns only once its line is durable.

Besides version records the journal holds *notes*: lines with a ``kind`` field
(``"expired"`` when retention forgets a version, ``"scrub"`` for a scrub outcome,
``"order"`` when reconcile gives a version another place in the version order).
`read_all` never yields a note, forgets a version whose last mention is an ``expired``
note, so a replay does not bring expired versions back, and yields a version with the
``order_key`` of an ``order`` note written after it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.records import VersionRecord
from agent.storage.volume import fsync_directory


@dataclass(frozen=True, slots=True)
class JournalPosition:
    segment: str
    offset: int


class Journal:
    def __init__(
        self,
        directory: Path,
        clock: Callable[[], datetime] | None = None,
        *,
        fsync: Callable[[int], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._fsync = fsync or _fsync  # a seam: tests count the group commits
        self._lock = threading.Lock()  # the writes, and the counters below
        self._sync_lock = threading.Lock()  # one fsync round at a time
        self._written = 0  # lines appended by this process
        self._synced = 0  # lines known durable
        self._pending: dict[str, int] = {}  # segment -> last line written to it, not synced
        self._failed: tuple[int, OSError] | None = None  # lines up to n: their fsync failed
        self._new_segment = False  # a segment was created: its name needs a directory fsync

    def append(self, record: VersionRecord) -> JournalPosition:
        return self._append_line(record.to_dict())

    def append_order(self, record: VersionRecord, order_key: str) -> JournalPosition:
        """Note that `record` takes the place `order_key` in its key's version order."""
        return self.append_note(
            "order",
            {
                "bucket": record.bucket,
                "key": record.key,
                "version_token": record.version_token,
                "order_key": order_key,
            },
        )

    def append_note(self, kind: str, fields: dict[str, Any]) -> JournalPosition:
        """Append a note line ``{"kind": kind, **fields}`` (fsynced like a record)."""
        return self._append_line({"kind": kind, **fields})

    def _append_line(self, document: dict[str, Any]) -> JournalPosition:
        line = json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8", errors="surrogatepass")
        segment = self.directory / f"{self._clock().strftime('%Y-%m-%d')}.jsonl"
        with self._lock:
            created = not segment.exists()
            fd = os.open(segment, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                append_line(fd, data)
                offset = os.lseek(fd, 0, os.SEEK_END)
            except BaseException:
                os.close(fd)
                raise
            self._written += 1
            line_number = self._written
            self._pending[segment.name] = line_number
            self._new_segment = self._new_segment or created
        try:
            self._commit(line_number, segment.name, fd)
        finally:
            os.close(fd)
        return JournalPosition(segment.name, offset)

    def _commit(self, line_number: int, segment: str, fd: int) -> None:
        """Return once line `line_number` is durable (group commit).

        The first appender to get here fsyncs every segment written since the last round,
        covering the lines of every appender that wrote meanwhile; those find their line
        synced and return without an fsync of their own. A failed round fails every line
        it covered (a second fsync could claim success for pages the kernel dropped)."""
        with self._sync_lock:
            if self._failed is not None and line_number <= self._failed[0]:
                exc = self._failed[1]
                raise OSError(exc.errno, f"journal fsync failed: {exc.strerror}")
            if line_number <= self._synced:
                return
            with self._lock:
                through = self._written
                segments, self._pending = self._pending, {}
                new_segment, self._new_segment = self._new_segment, False
            try:
                for name in segments:
                    if name == segment:
                        self._fsync(fd)
                    else:  # another day's segment (written just before midnight)
                        other = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
                        try:
                            self._fsync(other)
                        finally:
                            os.close(other)
                if new_segment:  # its name, once a day, after its first line
                    fsync_directory(self.directory)
            except OSError as exc:
                self._failed = (through, exc)
                raise
            self._synced = through

    def position(self) -> JournalPosition | None:
        """The end of the newest segment (what a snapshot taken now contains)."""
        segments = self._segments()
        if not segments:
            return None
        return JournalPosition(segments[-1].name, segments[-1].stat().st_size)

    def read_all(self) -> Iterator[VersionRecord]:
        """Every live record, oldest segment first (two passes: expired versions are forgotten).

        A torn last line (crash mid-write) is skipped. A record appended again after its
        ``expired`` note (backed up anew) is live again: the last mention wins.
        """
        expired_at: dict[tuple[str, str, str], int] = {}
        reordered: dict[tuple[str, str, str], tuple[int, str]] = {}
        for index, data in enumerate(self._documents()):
            if data.get("kind") == "expired":
                expired_at[_identity(data)] = index
            elif data.get("kind") == "order" and isinstance(data.get("order_key"), str):
                reordered[_identity(data)] = (index, data["order_key"])
        for index, data in enumerate(self._documents()):
            if "kind" in data:
                continue
            identity = _identity(data)
            if expired_at.get(identity, -1) > index:
                continue
            record = VersionRecord.from_dict(data)
            noted, order_key = reordered.get(identity, (-1, ""))
            yield dataclasses.replace(record, order_key=order_key) if noted > index else record

    def read_notes(self, kind: str | None = None) -> Iterator[dict[str, Any]]:
        """Every note (of `kind`, when given), oldest first."""
        for data in self._documents():
            if "kind" in data and (kind is None or data["kind"] == kind):
                yield data

    def read_since(self, position: JournalPosition | None) -> Iterator[dict[str, Any]]:
        """Every line (record or note, as a dict) appended after `position`."""
        for segment in self._segments():
            if position is not None and segment.name < position.segment:
                continue
            start = position.offset if position and segment.name == position.segment else 0
            yield from _documents_of(segment, start)

    def _documents(self) -> Iterator[dict[str, Any]]:
        for segment in self._segments():
            yield from _documents_of(segment, 0)

    def _segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.jsonl"))


def _documents_of(segment: Path, start: int) -> Iterator[dict[str, Any]]:
    with segment.open("rb") as handle:
        handle.seek(start)
        for raw in handle:
            if not raw.endswith(b"\n"):
                break
            try:
                data = json.loads(raw.decode("utf-8", errors="surrogatepass"))
            except ValueError:
                continue
            if isinstance(data, dict):
                yield data


def _identity(data: dict[str, Any]) -> tuple[str, str, str]:
    return (str(data.get("bucket")), str(data.get("key")), str(data.get("version_token")))


def _fsync(fd: int) -> None:
    os.fsync(fd)  # looked up at each call (tests patch os.fsync)


def after_torn_tail(fd: int) -> bytes:
    """A newline when the segment ends mid-line (a crash or ENOSPC cut the last append):
    without it the next record would join the torn bytes and be skipped by `read_all`."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end and os.pread(fd, 1, end - 1) != b"\n":
        return b"\n"
    return b""


def append_line(fd: int, line: bytes) -> None:
    """Append `line` to an O_APPEND file on a line of its own (after a torn tail too), whole:
    a short write (a nearly full disk) continues or raises, never leaves half a record."""
    _write_all(fd, after_torn_tail(fd) + line)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
