"""The version record: one per (bucket, key, version), in DynamoDB and in the volume journal."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.events import ObjectEvent
from agent.events import parse_time as parse_time  # re-exported: records are read with it


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A backed-up version of an object, or a tombstone (`deleted`) for a delete event."""

    bucket: str
    key: str
    version_token: str
    order_key: str
    event_name: str
    event_time: str
    backup_time: str
    volume_id: str
    deleted: bool = False
    delete_marker: bool = False
    version_id: str | None = None
    sequencer: str | None = None
    etag: str | None = None
    sha256: str | None = None
    size: int | None = None
    stored_size: int | None = None
    # Set when S3 holds the version but would not serve its bytes ("archived": GLACIER,
    # DEEP_ARCHIVE, Intelligent-Tiering archive tiers; "sse-c": a customer-provided key):
    # nothing stored, version_token "<unreadable>:<token>". Absent from older items.
    unreadable: str | None = None
    storage_class: str | None = None

    @classmethod
    def for_event(
        cls, event: ObjectEvent, *, backup_time: datetime, volume_id: str, **copy: Any
    ) -> VersionRecord:
        deleted = not copy
        token = event.version_token
        return cls(
            bucket=event.bucket,
            key=event.key,
            version_token=("del:" + token) if deleted else token,
            order_key=event.order_key,
            event_name=event.event_name,
            event_time=event.event_time.isoformat(),
            backup_time=backup_time.isoformat(),
            volume_id=volume_id,
            deleted=deleted,
            delete_marker=event.delete_marker,
            version_id=event.version_id,
            sequencer=event.sequencer,
            etag=event.etag,
            **copy,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VersionRecord:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for number in ("size", "stored_size"):
            if values.get(number) is not None:
                values[number] = int(values[number])
        values["deleted"] = bool(values.get("deleted", False))
        values["delete_marker"] = bool(values.get("delete_marker", False))
        return cls(**values)

    @property
    def removes_one_version(self) -> bool:
        """A permanent delete of one S3 version (not a delete marker): the key's other
        versions remain, so it says nothing about the key's current version."""
        return (
            self.deleted
            and not self.delete_marker
            and self.version_id is not None
            and self.version_id != "null"
        )
