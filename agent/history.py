"""One key's history → what S3 served at any time. The one place that decides it.

A key's records are of three kinds (agent/records.py):

* a **version**: a stored copy of one S3 version (or unversioned object);
* a **deletion**: a delete marker, or a delete of an unversioned key (or one reconcile
  found missing) — an entry of the version stack like a version, but with no bytes;
* a **removal**: ``ObjectRemoved:Delete`` with a versionId, S3's permanent delete of that
  one version or marker. Not an entry of the stack: it takes its version out of it.

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
    best: VersionRecord | None = None
    for record in history:
        if is_removal(record) or (at is not None and created_at(record) > at):
            continue
        if record.version_id not in (None, "null") and record.version_id in removed:
            continue
        if best is None or record.order_key > best.order_key or _readable_twin(record, best):
            best = record
    return best


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
