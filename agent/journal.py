"""The volume's own record of every version, so the volume alone can be restored.

Append-only JSON lines in daily segments (``journal/YYYY-MM-DD.jsonl``). Each append
is written whole and fsynced before the DynamoDB write, so a version the ledger knows
is always in the journal too. Replaying the journal (`read_all`) rebuilds the ledger.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from agent.records import VersionRecord
from agent.store import fsync_directory


@dataclass(frozen=True, slots=True)
class JournalPosition:
    segment: str
    offset: int


class Journal:
    def __init__(self, directory: Path, clock: Callable[[], datetime] | None = None) -> None:
        self.directory = Path(directory)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    def append(self, record: VersionRecord) -> JournalPosition:
        line = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8", errors="surrogatepass")
        segment = self.directory / f"{self._clock().strftime('%Y-%m-%d')}.jsonl"
        with self._lock:
            created = not segment.exists()
            fd = os.open(segment, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                _write_all(fd, _after_torn_tail(fd) + data)
                os.fsync(fd)
                offset = os.lseek(fd, 0, os.SEEK_END)
            finally:
                os.close(fd)
            if created:
                fsync_directory(self.directory)
        return JournalPosition(segment.name, offset)

    def position(self) -> JournalPosition | None:
        """The end of the newest segment (what a snapshot taken now contains)."""
        segments = self._segments()
        if not segments:
            return None
        return JournalPosition(segments[-1].name, segments[-1].stat().st_size)

    def read_all(self) -> Iterator[VersionRecord]:
        """Every record, oldest segment first; a torn last line (crash mid-write) is skipped."""
        for segment in self._segments():
            with segment.open("rb") as handle:
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break
                    try:
                        data = json.loads(raw.decode("utf-8", errors="surrogatepass"))
                    except ValueError:
                        continue
                    yield VersionRecord.from_dict(data)

    def _segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("*.jsonl"))


def _after_torn_tail(fd: int) -> bytes:
    """A newline when the segment ends mid-line (a crash or ENOSPC cut the last append):
    without it the next record would join the torn bytes and be skipped by `read_all`."""
    end = os.lseek(fd, 0, os.SEEK_END)
    if end and os.pread(fd, 1, end - 1) != b"\n":
        return b"\n"
    return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
