"""Helpers for the lifecycle tests: a backup service on moto, a settable clock, events."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from agent.config import Config
from agent.events import EventKind, ObjectEvent
from agent.pipeline.backup import BackupService
from agent.runtime.wiring import compression_settings
from agent.storage.journal import Journal
from agent.storage.volume import Volume
from tests.support import service
from tests.support.aws import BUCKET


def make_service(aws: Any, config: Config, volume: Volume, clock: Any = None) -> BackupService:
    return service.make_service(aws, volume, compression=compression_settings(config), clock=clock)


def put(aws: Any, key: str, body: bytes) -> dict[str, Any]:
    response: dict[str, Any] = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return response


def created(
    key: str,
    response: dict[str, Any],
    size: int,
    *,
    at: datetime,
    sequencer: str | None = None,
) -> ObjectEvent:
    """The event S3 would have sent for a put (hand-made: moto's lack versionId/sequencer)."""
    return ObjectEvent(
        kind=EventKind.CREATED,
        bucket=BUCKET,
        key=key,
        event_name="ObjectCreated:Put",
        event_time=at,
        version_id=response.get("VersionId"),
        etag=response["ETag"].strip('"'),
        size=size,
        sequencer=sequencer,
    )


def deleted(
    key: str, marker_version: str | None, *, at: datetime, sequencer: str | None = None
) -> ObjectEvent:
    """A delete-marker event; real S3 gives every PUT and DELETE event a sequencer."""
    return ObjectEvent(
        sequencer=sequencer,
        kind=EventKind.REMOVED,
        bucket=BUCKET,
        key=key,
        event_name="ObjectRemoved:DeleteMarkerCreated",
        event_time=at,
        version_id=marker_version,
        delete_marker=True,
    )


def enable_versioning(aws: Any) -> None:
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})


def journal_records(volume: Volume) -> list[Any]:
    return list(Journal(volume.journal_dir).read_all())
