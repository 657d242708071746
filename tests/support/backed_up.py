"""Test helper: real backups made by `BackupService` from hand-made S3 events.

moto sends no versionId or sequencer, so tests write to a versioned bucket and build
the events themselves, with increasing sequencers and chosen event times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from agent.aws import Clients
from agent.events import EventKind, ObjectEvent
from agent.pipeline.backup import BackupService, Result
from agent.storage.ledger import Ledger
from agent.storage.volume import CompressionSettings, Volume
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE
from tests.support.service import make_service

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@dataclass
class BackedUp:
    """Puts and deletes objects in S3 and backs each change up, as the agent would."""

    clients: Clients
    volume: Volume
    bucket: str = BUCKET
    table: str = TABLE
    clock: datetime = T0
    _sequence: int = 0
    service: BackupService = field(init=False)

    def __post_init__(self) -> None:
        self.clients.s3.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        self.service = make_service(
            self.clients,
            self.volume,
            ledger=Ledger(self.clients.dynamodb, self.table),
            buckets=frozenset([self.bucket]),
            compression=CompressionSettings(level=1, threads=1),
            clock=lambda: self.clock,
        )

    def put(self, key: str, body: bytes, at: datetime | None = None) -> str:
        """Upload `body` and back it up; return the S3 version id."""
        response = self.clients.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        version = response["VersionId"]
        self._process(
            EventKind.CREATED,
            key,
            "ObjectCreated:Put",
            at,
            version_id=version,
            etag=response["ETag"].strip('"'),
            size=len(body),
        )
        return str(version)

    def delete(self, key: str, at: datetime | None = None) -> str:
        """Delete (a delete marker, as a versioned bucket does) and record the tombstone."""
        response = self.clients.s3.delete_object(Bucket=self.bucket, Key=key)
        marker = response["VersionId"]
        self._process(
            EventKind.REMOVED,
            key,
            "ObjectRemoved:DeleteMarkerCreated",
            at,
            version_id=marker,
            delete_marker=True,
        )
        return str(marker)

    def _process(
        self, kind: EventKind, key: str, name: str, at: datetime | None, **fields: Any
    ) -> Result:
        self._sequence += 1
        self.clock = at or self.clock + timedelta(minutes=1)
        event = ObjectEvent(
            kind=kind,
            bucket=self.bucket,
            key=key,
            event_name=name,
            event_time=self.clock,
            sequencer=f"{self._sequence:016X}",
            **fields,
        )
        return self.service.process(event)


def write_config(path: Path, root: Path, **sections: Any) -> Path:
    """A config file matching tests.conftest.make_config, with extra sections."""
    raw: dict[str, Any] = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL, "wait_time_seconds": 0},
        "buckets": [BUCKET],
        "storage": {"root": str(root), "min_free_bytes": 0, "compression_threads": 1},
        "state": {"table": TABLE},
        "logging": {"format": "json", "level": "WARNING"},
        "restore": {"workers": 2},
    }
    raw.update(sections)
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path
