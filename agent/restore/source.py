"""Where restores learn what was backed up: DynamoDB (the ledger) or the volume's journal.

Both sources answer the same two questions — the newest record of every key under a
prefix, and the full history of one key — so the restore, list and verify code never
knows which one it is using. Records either source could not use (a bad journal line, a
malformed item) are skipped and kept in its `rejections`, for the command's summary.
`select` then picks the version a restore wants: the latest, a named version, or what the
bucket held at a point in time.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from agent import history
from agent.records import Rejections, VersionRecord, parse_time
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger


class RestoreSource(Protocol):
    """What a restore reads records from."""

    name: str
    rejections: Rejections  # records read and skipped: not used, named in the summary

    def latest(self, bucket: str, prefix: str = "", after: str = "") -> Iterator[VersionRecord]:
        """Every key under `prefix` (and after `after`, a page's last key), in key order,
        as its `history.latest_entry`: the version S3 serves, or a deletion or removal for
        a key absent in S3."""
        ...

    def history(self, bucket: str, key: str) -> list[VersionRecord]:
        """Every record of one key, oldest first in the version order."""
        ...

    def records(self, bucket: str, key: str) -> Iterator[VersionRecord]:
        """Every record of one key, streamed in no promised order (memory: what the source
        holds anyway, not the key's history)."""
        ...


class LedgerSource:
    """The DynamoDB table: LATEST items through the key index, versions by key."""

    name = "dynamodb"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.rejections = ledger.rejections

    def latest(self, bucket: str, prefix: str = "", after: str = "") -> Iterator[VersionRecord]:
        return self.ledger.keys(bucket, prefix, after)

    def history(self, bucket: str, key: str) -> list[VersionRecord]:
        return self.ledger.versions(bucket, key)

    def records(self, bucket: str, key: str) -> Iterator[VersionRecord]:
        return self.ledger.stream_versions(bucket, key)


class JournalSource:
    """The volume's journal, replayed once into memory (works with DynamoDB unreachable)."""

    name = "journal"

    def __init__(self, journal: Journal) -> None:
        self.rejections = journal.rejections
        self._histories: dict[tuple[str, str], dict[str, VersionRecord]] = {}
        for record in journal.read_all():
            versions = self._histories.setdefault((record.bucket, record.key), {})
            versions.setdefault(record.version_token, record)  # a replayed duplicate: first wins
        self._keys: dict[str, list[str]] = {}
        for bucket, key in sorted(self._histories):
            self._keys.setdefault(bucket, []).append(key)

    def latest(self, bucket: str, prefix: str = "", after: str = "") -> Iterator[VersionRecord]:
        keys = self._keys.get(bucket, [])
        start = bisect.bisect_right(keys, after) if after >= prefix else 0
        for index in range(max(start, bisect.bisect_left(keys, prefix)), len(keys)):
            key = keys[index]
            if not key.startswith(prefix):
                break
            versions = self._histories[(bucket, key)]
            if len(versions) == 1:  # `history.latest_entry` of one record is that record
                yield next(iter(versions.values()))  # (the entry, or the key's one removal)
                continue
            entry = history.latest_entry(list(versions.values()))
            if entry is not None:
                yield entry

    def history(self, bucket: str, key: str) -> list[VersionRecord]:
        return history.ordered(self._histories.get((bucket, key), {}).values())

    def records(self, bucket: str, key: str) -> Iterator[VersionRecord]:
        return iter(list(self._histories.get((bucket, key), {}).values()))


@dataclass(frozen=True, slots=True)
class Selector:
    """Which version a restore wants: the latest, a given version, or the state at a time."""

    version: str | None = None  # an S3 version id, or a version token from `list`
    at: datetime | None = None
    include_deleted: bool = False  # latest only: also keys whose newest event is a delete

    @property
    def needs_history(self) -> bool:
        return self.version is not None or self.at is not None


@dataclass(frozen=True, slots=True)
class Choice:
    """The stored version picked for a key, or why none was (`reason`)."""

    key: str
    record: VersionRecord | None
    reason: str = ""
    deleted_in_s3: bool = False  # the key was absent in S3 (now, or at the chosen time)


def select(key: str, records: list[VersionRecord], selector: Selector) -> Choice:
    """Pick from a key's history what `selector` asks for (agent/history.py decides what
    S3 served; this only words the answer)."""
    if not records:
        return Choice(key, None, "no backup of this key")
    if selector.version is not None:
        return _by_version(key, records, selector.version)
    if selector.at is not None:
        return _at(key, records, selector.at)
    now = history.served(records)
    if now is not None:
        return Choice(key, now)
    deleted_at = history.absent_since(records)
    if not selector.include_deleted:
        return Choice(key, None, f"deleted in S3 at {deleted_at}", deleted_in_s3=True)
    held = history.last_held(records)
    if held is None:
        return Choice(key, None, "only a delete was ever recorded", deleted_in_s3=True)
    return Choice(key, held, deleted_in_s3=True)


def newest_stored(records: list[VersionRecord]) -> VersionRecord | None:
    """The version S3 served last: now, or before the key was deleted."""
    return history.last_held(records)


def _by_version(key: str, records: list[VersionRecord], version: str) -> Choice:
    matches = [r for r in records if version in (r.version_id, r.version_token)]
    stored = [r for r in matches if not r.deleted]
    if stored:
        return Choice(key, stored[-1])
    if matches:
        return Choice(key, None, f"version {version} is a delete, not content")
    return Choice(key, None, f"no backed-up version {version}")


def _at(key: str, records: list[VersionRecord], at: datetime) -> Choice:
    entry = history.current(records, at)
    if entry is None:
        if any(history.created_at(r) <= at for r in records):
            return Choice(key, None, f"no version existed at {at.isoformat()}", True)
        return Choice(key, None, f"did not exist yet at {at.isoformat()}")
    if entry.deleted:
        return Choice(key, None, f"deleted at {entry.event_time}, before {at.isoformat()}", True)
    return Choice(key, entry)


def event_datetime(record: VersionRecord) -> datetime:
    return parse_time(record.event_time)
