"""The version record: one per (bucket, key, version), in DynamoDB and in the volume journal."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent import order
from agent.events import ObjectEvent
from agent.events import parse_time as parse_time  # re-exported: records are read with it

_MARKER_EVENTS = ("DeleteMarkerCreated", "ReconcileDeleteMarker")


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

    @classmethod
    def for_event(
        cls,
        event: ObjectEvent,
        *,
        backup_time: datetime,
        volume_id: str,
        order_key: str | None = None,
        **copy: Any,
    ) -> VersionRecord:
        """The record of `event`: a stored copy (`copy` given) or a tombstone. `order_key`
        replaces the event's own (reconcile places listed versions by the listing)."""
        deleted = not copy
        token = event.version_token
        if deleted:
            # A permanent delete of version X and the delete marker X are two records.
            token = ("rm:" if _removes_one_version(event) else "del:") + token
        return cls(
            bucket=event.bucket,
            key=event.key,
            version_token=token,
            order_key=order_key or event.order_key,
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
        if "delete_marker" not in values:  # written before records said: the event's name
            name = str(values.get("event_name", ""))
            values["delete_marker"] = values["deleted"] and name.endswith(_MARKER_EVENTS)
        values["delete_marker"] = bool(values["delete_marker"])
        if "event_time" in values:  # records of older releases: the order key of today
            values["order_key"] = order.migrated(
                values.get("order_key"), parse_time(values["event_time"]), values.get("sequencer")
            )
        return cls(**values)

    @property
    def removes_one_version(self) -> bool:
        """A permanent delete of one S3 version or marker (``ObjectRemoved:Delete`` with a
        versionId): not a version itself; that version stops existing, the others stay.
        Older releases gave it the token ``del:<token>``, today's ``rm:<token>``."""
        return (
            self.deleted
            and not self.delete_marker
            and self.version_id is not None
            and self.version_id != "null"
        )


def _removes_one_version(event: ObjectEvent) -> bool:
    return not event.delete_marker and event.version_id not in (None, "null")
