"""What S3 serves and what the restore code would bring back, side by side.

`S3Clock` drives moto's own clock (LastModified, the listing's order), the hand-made
events and the agent, so a test decides every time and never sleeps. `Bucket` puts and
deletes in a versioned moto bucket and hands back the events real S3 would send (moto
sends none for a delete marker and no versionId or sequencer); the test delivers them,
late, twice or never. `restored` and `served` answer "which bytes, or absent".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import moto.s3.models
import pytest

from agent.events import ObjectEvent, parse_message
from agent.records import VersionRecord
from agent.restore.plan import RestoreScope, plan
from agent.restore.source import LedgerSource, RestoreSource, Selector, select
from agent.storage.volume import Volume
from tests.support.aws import BUCKET
from tests.support.clock import FakeClock
from tests.support.events import notification, s3_record

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)


class S3Clock(FakeClock):
    """The one clock of a test: moto stamps versions with it too (see `install`)."""

    def install(self, monkeypatch: pytest.MonkeyPatch) -> S3Clock:
        monkeypatch.setattr(moto.s3.models, "utcnow", lambda: self.now.replace(tzinfo=None))
        return self

    def tick(self, seconds: float = 1.0) -> datetime:
        self.advance(seconds=seconds)
        return self.now


@dataclass
class Bucket:
    """A versioned moto bucket whose changes come back as the events S3 would send."""

    s3: Any
    clock: S3Clock
    name: str = BUCKET
    _sequencer: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.s3.put_bucket_versioning(
            Bucket=self.name, VersioningConfiguration={"Status": "Enabled"}
        )

    def put(self, key: str, body: bytes) -> tuple[str, ObjectEvent]:
        """Upload a new version; (its version id, the ObjectCreated:Put event)."""
        response = self.s3.put_object(Bucket=self.name, Key=key, Body=body)
        version = str(response["VersionId"])
        event = self.event(
            key,
            "ObjectCreated:Put",
            versionId=version,
            size=len(body),
            eTag=response["ETag"].strip('"'),
        )
        return version, event

    def delete(self, key: str) -> tuple[str, ObjectEvent]:
        """A simple DELETE: a delete marker; (its version id, DeleteMarkerCreated)."""
        marker = str(self.s3.delete_object(Bucket=self.name, Key=key)["VersionId"])
        return marker, self.event(key, "ObjectRemoved:DeleteMarkerCreated", versionId=marker)

    def delete_version(self, key: str, version: str) -> ObjectEvent:
        """DELETE ?versionId=: that version (or marker) gone for good; ObjectRemoved:Delete."""
        self.s3.delete_object(Bucket=self.name, Key=key, VersionId=version)
        return self.event(key, "ObjectRemoved:Delete", versionId=version)

    def event(self, key: str, name: str, **obj: Any) -> ObjectEvent:
        """A notification as S3 sends it (now, with the next sequencer), parsed by the agent."""
        at = self.clock.now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        sequencer = f"{next(self._sequencer):018X}"
        record = s3_record(key, bucket=self.name, event_name=name, event_time=at, **obj)
        record["s3"]["object"]["sequencer"] = sequencer
        (event,) = parse_message(notification(record)).events
        return event

    def served(self, key: str) -> bytes | None:
        """What a GetObject without VersionId answers: the bytes, or None (404)."""
        try:
            body: bytes = self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return body


def chosen(source: RestoreSource, key: str, *, at: datetime | None = None) -> VersionRecord | None:
    """The version `backup-restore --key KEY [--at T]` restores as S3's, or None when the
    restore says the key did not exist (deleted in S3, or not yet created)."""
    return chosen_from(key, source.history(BUCKET, key), at=at)


def chosen_from(
    key: str, history: list[VersionRecord], *, at: datetime | None = None
) -> VersionRecord | None:
    """`chosen` over a history already read (the same `select` the CLI calls)."""
    choice = select(key, history, Selector(at=at, include_deleted=True))
    return None if choice.deleted_in_s3 else choice.record


def chosen_by_prefix(
    source: RestoreSource, key: str, *, at: datetime | None = None
) -> VersionRecord | None:
    """The version a `--prefix`/`--all` restore picks for `key` (None: left out)."""
    picked = plan(source, BUCKET, RestoreScope(prefix=key), Selector(at=at))
    records = [item.record for item in picked.items if item.key == key]
    return records[0] if records else None


def content(volume: Volume, record: VersionRecord | None) -> bytes | None:
    if record is None or record.sha256 is None:
        return None
    with volume.open_copy(record.sha256) as reader:
        data: bytes = reader.read()
    return data


def restored(
    volume: Volume, source: RestoreSource, key: str, *, at: datetime | None = None
) -> bytes | None:
    """The bytes `--key` restores as the key's content at `at` (now), or None for absent."""
    return content(volume, chosen(source, key, at=at))


def ledger_source(ledger: Any) -> LedgerSource:
    return LedgerSource(ledger)


def later(at: datetime, seconds: float = 0.001) -> datetime:
    return at + timedelta(seconds=seconds)
