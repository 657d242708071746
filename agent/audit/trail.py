"""The audit trail on the volume: append-only, fsynced JSON lines in daily segments.

``<root>/audit/YYYY-MM-DD.jsonl``, written like the journal (agent/storage/journal.py
`append_line`: whole lines, a torn tail closed off, fsync, the directory fsynced when a
segment is born). Nothing in the agent rewrites or removes a segment. When a shipper is
given (CloudWatch Logs, cloudwatch.py), every record is also sent there, so wiping the
instance does not erase it; what could not be sent is sent by the next `record` or
`ship_pending` (a cursor in ``audit/shipped.json`` says how far shipping got).

Lifecycle: none; a trail holds no thread. `record` never raises for shipping: the record
is durable on the volume first, and the failure is logged.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import structlog

from agent.audit.records import AuditRecord, parse_record
from agent.storage.journal import append_line
from agent.storage.volume import atomic_write_bytes, fsync_directory

log = structlog.get_logger("agent.audit")

AUDIT_DIR = "audit"
CURSOR_NAME = "shipped.json"


class Shipper(Protocol):
    def ship(self, records: list[AuditRecord]) -> None: ...


@dataclass(frozen=True, slots=True)
class Position:
    segment: str
    offset: int


class AuditTrail:
    def __init__(
        self,
        directory: Path | None,
        *,
        shipper: Shipper | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        """`directory` None: no volume to write on (a mounted snapshot elsewhere), ship only."""
        self.directory = directory
        self.shipper = shipper
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()

    @classmethod
    def on_volume(
        cls,
        root: Path,
        *,
        shipper: Shipper | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> AuditTrail:
        return cls(Path(root) / AUDIT_DIR, shipper=shipper, clock=clock)

    def record(self, record: AuditRecord) -> None:
        """Durable on the volume first, then shipped (with whatever was left behind)."""
        log.info(
            "audit.recorded",
            action=record.action,
            outcome=record.outcome,
            user=record.who.user,
            target=record.target,
        )
        if self.directory is None:
            self._ship([record])
            return
        try:
            self._append(record)
        except OSError as exc:  # a person without write access to audit/, a full disk
            log.error("audit.write_failed", directory=str(self.directory), error=str(exc))
            if not self._ship([record]):
                raise
            return
        self.ship_pending()

    def ship_pending(self) -> int:
        """Send what the volume holds beyond the cursor; the number of records sent."""
        if self.shipper is None or self.directory is None:
            return 0
        with self._lock:
            cursor = self._load_cursor()
            pending: list[AuditRecord] = []
            end = cursor
            for position, record in self._read(cursor):
                pending.append(record)
                end = position
            if not pending:
                return 0
            if not self._ship(pending):
                return 0
            if end is not None:
                self._save_cursor(end)
            return len(pending)

    def read(self, since: datetime | None = None) -> Iterator[AuditRecord]:
        """Every record on the volume at or after `since`, oldest first."""
        for _position, record in self._read(None):
            if since is None or record.at >= since:
                yield record

    # -- the segments ------------------------------------------------------------------

    def _append(self, record: AuditRecord) -> None:
        assert self.directory is not None
        line = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8", errors="surrogatepass")
        segment = self.directory / f"{record.at.astimezone(UTC).strftime('%Y-%m-%d')}.jsonl"
        with self._lock:
            if not self.directory.is_dir():
                self.directory.mkdir()
                fsync_directory(self.directory.parent)
            created = not segment.exists()
            fd = os.open(segment, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                append_line(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync_directory(self.directory)

    def _segments(self) -> list[Path]:
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(self.directory.glob("????-??-??.jsonl"))

    def _read(self, after: Position | None) -> Iterator[tuple[Position, AuditRecord]]:
        for segment in self._segments():
            if after is not None and segment.name < after.segment:
                continue
            start = after.offset if after is not None and segment.name == after.segment else 0
            with segment.open("rb") as handle:
                handle.seek(start)
                offset = start
                for raw in handle:
                    if not raw.endswith(b"\n"):
                        break  # a torn tail: not a record (yet)
                    offset += len(raw)
                    try:
                        data: Any = json.loads(raw.decode("utf-8", errors="surrogatepass"))
                    except ValueError:
                        continue
                    record = parse_record(data)
                    if record is not None:
                        yield Position(segment.name, offset), record

    # -- shipping ----------------------------------------------------------------------

    def _ship(self, records: list[AuditRecord]) -> bool:
        if self.shipper is None:
            return False
        try:
            self.shipper.ship(records)
        except Exception as exc:  # noqa: BLE001 - the volume holds it; the next call retries
            log.warning("audit.ship_failed", records=len(records), error=str(exc))
            return False
        return True

    def _cursor_path(self) -> Path:
        assert self.directory is not None
        return self.directory / CURSOR_NAME

    def _load_cursor(self) -> Position | None:
        try:
            data = json.loads(self._cursor_path().read_bytes())
            return Position(str(data["segment"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # none yet, or unreadable: ship again (the reader drops duplicates)

    def _save_cursor(self, position: Position) -> None:
        document = {"segment": position.segment, "offset": position.offset}
        atomic_write_bytes(self._cursor_path(), json.dumps(document).encode())
