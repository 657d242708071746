"""One key's history → what S3 served at any time. The one place that decides it.

A key's records are of three kinds (agent/records.py):

* a **version**: a stored copy of one S3 version (or unversioned object);
* a **deletion**: a delete marker, or a delete of an unversioned key (or one reconcile
  found missing) — an entry of the version stack like a version, but with no bytes;
* a **removal**: ``ObjectRemoved:Delete`` with a versionId, S3's permanent delete of that
  one version or marker. Not an entry of the stack: it takes its version out of it.

The ``null`` version (unversioned objects, and what a versioning-suspended bucket
writes) is one entry: the newest null record replaces the older ones, and a delete of it
that is not a marker (``DeleteObject versionId=null``) leaves the versions under it.

S3 serves the top of the stack: of the versions and deletions created by then and not
removed by then, the last in the version order (`order_key`, agent/order.py). That is
`current(history, at)`; `at=None` is now. Every restore path (``--key``, ``--at``,
``--prefix``, ``--all``, ``--include-deleted``, ``--offline``, ``share``, ``list``)
and the ledger's LATEST pointer (`latest_entry`) are derived from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from agent.records import VersionRecord, parse_time


def is_removal(record: VersionRecord) -> bool:
    return record.removes_one_version


def ordered(history: Iterable[VersionRecord]) -> list[VersionRecord]:
    """Oldest first in the version order (removals at the time they happened)."""
    return sorted(history, key=lambda r: r.order_key)


def created_at(record: VersionRecord) -> datetime:
    return parse_time(record.event_time)


def current(history: Sequence[VersionRecord], at: datetime | None = None) -> VersionRecord | None:
    """The stack entry S3 served at `at` (now when None): a version, a deletion, or None
    when no version existed. Entries recorded later than `at` did not exist yet."""
    removed = {
        r.version_id for r in history if is_removal(r) and (at is None or created_at(r) <= at)
    }
    entries = [
        r
        for r in history
        if not is_removal(r)
        and (at is None or created_at(r) <= at)
        and (is_null(r) or r.version_id not in removed)
    ]
    null = _null_entry(entries)
    best: VersionRecord | None = None
    for record in entries:
        if is_null(record) and record is not null:
            continue
        if best is None or record.order_key > best.order_key or _readable_twin(record, best):
            best = record
    return best


def is_null(record: VersionRecord) -> bool:
    """An entry of the ``null`` version: an unversioned object, or one written while the
    bucket's versioning was suspended (or before it was enabled)."""
    return record.version_id in (None, "null")


def empties_null(record: VersionRecord) -> bool:
    """A delete of the null version that leaves no entry in its place (``ObjectRemoved:Delete``
    of ``versionId=null``, an unversioned delete, a key reconcile found missing): not a
    delete marker."""
    return is_null(record) and record.deleted and not record.delete_marker


def _null_entry(entries: Sequence[VersionRecord]) -> VersionRecord | None:
    """The one null entry of the stack: S3 keeps a single version with the ID null, which
    each PUT and each delete marker of a suspended bucket replaces. A delete of it that
    leaves nothing takes it out when other versions remain (S3 then serves the newest of
    those); alone, it stays as the key's deletion."""
    nulls = [r for r in entries if is_null(r)]
    if not nulls:
        return None
    # of two records in one place, the readable one (an archived object restored in S3)
    newest = max(nulls, key=lambda r: (r.order_key, not r.unreadable))
    if empties_null(newest) and any(not is_null(r) for r in entries):
        return None
    return newest


def _readable_twin(record: VersionRecord, best: VersionRecord) -> bool:
    """An archived version restored in S3 is backed up in its archived record's place (the
    same order key): the readable record is the one S3 serves."""
    return record.order_key == best.order_key and bool(best.unreadable) and not record.unreadable


def latest_entry(history: Sequence[VersionRecord]) -> VersionRecord | None:
    """What the ledger's LATEST item holds: the current entry, or — when every version of
    the key was removed — the newest removal, so the key stays listed as deleted."""
    now = current(history)
    if now is not None:
        return now
    removals = [r for r in history if is_removal(r)]
    return max(removals, key=lambda r: r.order_key) if removals else None


def served(history: Sequence[VersionRecord], at: datetime | None = None) -> VersionRecord | None:
    """The version whose bytes S3 served at `at` (now): None when the key was absent."""
    entry = current(history, at)
    return entry if entry is not None and not entry.deleted else None


def last_held(history: Sequence[VersionRecord]) -> VersionRecord | None:
    """The version S3 served last before the key became absent (for ``--include-deleted``
    and ``list --deleted``): the state just before each change, newest change first."""
    now = served(history)
    if now is not None:
        return now
    for moment in sorted({created_at(r) for r in history}, reverse=True):
        before = [r for r in history if created_at(r) < moment]
        held = served(before)
        if held is not None:
            return held
    return None


def absent_since(history: Sequence[VersionRecord]) -> str:
    """When the key (absent now) became absent, as recorded: the event time of the
    deletion on top, or of the newest removal."""
    entry = latest_entry(history)
    return entry.event_time if entry is not None else ""
