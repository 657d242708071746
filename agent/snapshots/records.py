"""What the agent knows about a snapshot, and where it writes that down.

* EC2 tags (`MANAGED_TAG`, `VOLUME_TAG`, ...): the record that outlives the instance and
  the volume; `Snapshot.from_ec2` reads them back, `tag_list`/`tag_dict` convert.
* `SnapshotRun`: what one `SnapshotManager.take` did.
* The volume's `snapshots/snapshots.jsonl` (`append_record`, `read_records`, `run_entry`)
  and the DynamoDB item under `pk = RECORD_PK_PREFIX + <volume id>`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.records import parse_time
from agent.storage.journal import Journal, append_line
from agent.storage.volume import fsync_directory

MANAGED_TAG = "backup-agent:managed"
VOLUME_TAG = "backup-agent:volume-id"
TAKEN_AT_TAG = "backup-agent:taken-at"
JOURNAL_TAG = "backup-agent:journal-position"
SOURCE_TAG = "backup-agent:source-snapshot"
RECORD_PK_PREFIX = "snapshot#"
RECORDS_DIR = "snapshots"
RECORDS_FILE = "snapshots.jsonl"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An agent snapshot as EC2 describes it."""

    snapshot_id: str
    volume_id: str
    region: str
    state: str  # pending | completed | error (| recoverable, recovering)
    taken_at: datetime
    progress: str = ""
    journal_position: str | None = None
    size_gib: int | None = None
    source_snapshot_id: str | None = None

    @classmethod
    def from_ec2(cls, item: Mapping[str, Any], region: str) -> Snapshot:
        tags = tag_dict(item.get("Tags", []))
        start = item.get("StartTime")
        taken = _parse_time(tags.get(TAKEN_AT_TAG)) or (
            start.astimezone(UTC) if isinstance(start, datetime) else datetime.fromtimestamp(0, UTC)
        )
        return cls(
            snapshot_id=str(item["SnapshotId"]),
            volume_id=tags.get(VOLUME_TAG, str(item.get("VolumeId", ""))),
            region=region,
            state=str(item.get("State", "")),
            taken_at=taken,
            progress=str(item.get("Progress", "")),
            journal_position=tags.get(JOURNAL_TAG),
            size_gib=item.get("VolumeSize"),
            source_snapshot_id=tags.get(SOURCE_TAG),
        )


@dataclass(frozen=True, slots=True)
class SnapshotRun:
    """What one `take` did (or, with dry_run, would do)."""

    volume_id: str
    state: str  # completed | error | stuck | dry-run
    snapshot_id: str | None = None
    started_at: datetime | None = None
    duration_seconds: float | None = None
    journal_position: str | None = None
    flush: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    copy_snapshot_id: str | None = None
    deleted: tuple[str, ...] = ()
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state in ("completed", "dry-run")


def append_record(root: Path, entry: Mapping[str, Any]) -> None:
    """One JSON line in `<root>/snapshots/snapshots.jsonl`, fsynced."""
    directory = Path(root) / RECORDS_DIR
    if not directory.is_dir():
        directory.mkdir()
        fsync_directory(directory.parent)
    line = (json.dumps(dict(entry), separators=(",", ":"), sort_keys=True) + "\n").encode()
    fd = os.open(directory / RECORDS_FILE, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        append_line(fd, line)  # after a torn last line, on a new one; never half written
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(root: Path) -> list[dict[str, Any]]:
    """The volume's snapshot records, the newest state of each snapshot, oldest first."""
    path = Path(root) / RECORDS_DIR / RECORDS_FILE
    latest: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line after a crash
        merged = {**latest.get(entry.get("snapshot_id", ""), {}), **entry}
        latest[str(entry.get("snapshot_id"))] = merged
    return sorted(latest.values(), key=lambda e: str(e.get("taken_at", "")))


def run_entry(run: SnapshotRun, region: str, copy_region: str | None) -> dict[str, Any]:
    return {
        "snapshot_id": run.snapshot_id,
        "volume_id": run.volume_id,
        "region": region,
        "state": run.state,
        "taken_at": run.started_at.astimezone(UTC).isoformat() if run.started_at else None,
        "journal_position": run.journal_position,
        "flush": run.flush,
        "duration_seconds": run.duration_seconds,
        "copy_region": copy_region if run.copy_snapshot_id else None,
        "copy_snapshot_id": run.copy_snapshot_id,
        "message": run.message or None,
    }


def tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def tag_dict(tags: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    return {str(t["Key"]): str(t.get("Value", "")) for t in tags}


def position_text(journal: Journal) -> str | None:
    position = journal.position()
    return f"{position.segment}:{position.offset}" if position else None


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None
