"""What a restore brings back, and where each file lands: the plan, before any byte moves.

`plan` turns a scope (one key, a prefix, everything) and a `Selector` into items, each a
stored version; the keys left out say why (deleted in S3, not found, archived in S3 and
never readable to the agent). `place` then gives each item a collision-free, escaped path
under a restore directory (see paths.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from agent.holders import held_by
from agent.records import VersionRecord
from agent.restore.paths import Placement, place_keys
from agent.restore.source import Choice, RestoreSource, Selector, select


@dataclass(frozen=True, slots=True)
class RestoreScope:
    """What to restore: exactly one of `key`, `prefix` (may be ""), or everything."""

    key: str | None = None
    prefix: str | None = None

    @classmethod
    def everything(cls) -> RestoreScope:
        return cls(prefix="")


@dataclass(frozen=True, slots=True)
class Item:
    """One stored version to restore, and where it lands (`placement` for directories)."""

    record: VersionRecord
    deleted_in_s3: bool = False
    placement: Placement | None = None

    @property
    def key(self) -> str:
        return self.record.key

    @property
    def size(self) -> int:
        return self.record.size or 0


@dataclass(frozen=True, slots=True)
class Plan:
    items: list[Item]
    skipped: list[Choice] = field(default_factory=list)  # keys with no version to restore
    missing: list[Choice] = field(default_factory=list)  # asked for by name, not found
    # A fleet: versions whose copy another member's volume holds (`held_here` splits them off)
    elsewhere: list[Item] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(item.size for item in self.items)

    @property
    def renamed(self) -> list[Item]:
        return [i for i in self.items if i.placement is not None and i.placement.renamed]


def plan(source: RestoreSource, bucket: str, scope: RestoreScope, selector: Selector) -> Plan:
    """Choose a version of every key in scope; the keys left out say why."""
    choices = [readable(source, bucket, c) for c in _choices(source, bucket, scope, selector)]
    items = [Item(c.record, c.deleted_in_s3) for c in choices if c.record is not None]
    unchosen = [c for c in choices if c.record is None]
    if scope.key is not None:
        return Plan(items, missing=unchosen)
    return Plan(items, skipped=unchosen)


def readable(source: RestoreSource, bucket: str, choice: Choice) -> Choice:
    """A choice of a version recorded as unreadable (archived in S3, SSE-C) becomes the
    readable record of that same version when one was made later (the object was restored
    in S3 and backed up), else no version, with the reason and what to do."""
    record = choice.record
    if record is None or not record.unreadable:
        return choice
    for other in reversed(source.history(bucket, record.key)):
        if not other.deleted and not other.unreadable and _same_version(other, record):
            return Choice(choice.key, other, choice.reason, choice.deleted_in_s3)
    return Choice(choice.key, None, unreadable_reason(record), choice.deleted_in_s3)


def unreadable_reason(record: VersionRecord) -> str:
    version = record.version_id or record.version_token
    if record.unreadable == "sse-c":
        return f"version {version} is encrypted with a customer-provided key (SSE-C): not backed up"
    where = f" ({record.storage_class})" if record.storage_class else ""
    return (
        f"version {version} is archived in S3{where}: not backed up; restore it in S3, the"
        " agent then backs it up (docs/archived-objects.md)"
    )


def _same_version(readable_record: VersionRecord, unreadable_record: VersionRecord) -> bool:
    if unreadable_record.version_id not in (None, "null"):
        return readable_record.version_id == unreadable_record.version_id
    prefix = f"{unreadable_record.unreadable}:"
    return readable_record.version_token == unreadable_record.version_token.removeprefix(
        prefix
    ) or (bool(readable_record.etag) and readable_record.etag == unreadable_record.etag)


def place(items_plan: Plan) -> Plan:
    """Give every item a collision-free, escaped path relative to the restore directory."""
    placements = place_keys(item.key for item in items_plan.items)
    placed = [Item(i.record, i.deleted_in_s3, placements[i.key]) for i in items_plan.items]
    return Plan(placed, items_plan.skipped, items_plan.missing, items_plan.elsewhere)


def held_here(
    items_plan: Plan,
    volume_id: str,
    has_copy: Callable[[str], bool],
    current: Callable[[VersionRecord], VersionRecord] | None = None,
) -> Plan:
    """The items this volume can restore; the others, recorded on another volume (a fleet
    member's; with replicas, no holder is this volume) and not stored here too, move to
    `elsewhere` to be named with their holder.
    A copy recorded on this volume but absent stays an item: it fails, as it should.
    `current` reads a record's holders again (replicas: a key's LATEST is a copy made before
    the other groups added theirs), asked only of an item that would go elsewhere."""
    here: list[Item] = []
    elsewhere = list(items_plan.elsewhere)
    for item in items_plan.items:
        if not restorable_here(item.record, volume_id, has_copy) and current is not None:
            item = dataclasses.replace(item, record=current(item.record))
        (here if restorable_here(item.record, volume_id, has_copy) else elsewhere).append(item)
    return Plan(here, items_plan.skipped, items_plan.missing, elsewhere)


def restorable_here(record: VersionRecord, volume_id: str, has_copy: Callable[[str], bool]) -> bool:
    """Recorded on this volume (`held_by`), or its content is stored here all the same (a
    copy a fleet member kept when another won the version, or the same bytes of another
    version: copies are content-addressed)."""
    return held_by(record, volume_id) or bool(record.sha256 and has_copy(record.sha256))


def _choices(
    source: RestoreSource, bucket: str, scope: RestoreScope, selector: Selector
) -> Iterator[Choice]:
    if scope.key is not None:
        yield select(scope.key, source.history(bucket, scope.key), selector)
        return
    for latest in source.latest(bucket, scope.prefix or ""):
        if latest.deleted and not (selector.include_deleted or selector.needs_history):
            yield Choice(latest.key, None, f"deleted in S3 at {latest.event_time}", True)
        elif latest.deleted or selector.needs_history:
            yield select(latest.key, source.history(bucket, latest.key), selector)
        else:
            yield Choice(latest.key, latest)
