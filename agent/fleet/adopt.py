"""A member leaves for good: its volume, attached to another member, is served from there.

The ledger's records name the *volume* that holds each copy (the id in the volume's marker,
which moves with the volume, or with a volume made from its snapshot), so adopting a volume
rewrites none of them. It does three things: records its journal's versions the table does
not know (a member killed between its journal line and its ledger write), records in the
fleet register which member now serves the volume (so a restore elsewhere names the right
instance), and marks the departed member `stopped` so its missing heartbeat stops alarming.
Nothing is copied again.

With replicas the ledger is the member's own (`wiring.member_ledger`: its replica group,
the adopted volume): a version recorded now names the volume as the group's holder, and a
version another group recorded without this volume's hold gets it (`Ledger.record` adds it
to `holders`). The journal is read through `Journal.read_all`, which forgets the versions
this volume's retention expired (its note comes before the item's delete), so none of
those is recorded again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from agent.fleet.member import STOPPED
from agent.fleet.registry import Registry
from agent.holders import held_by
from agent.records import VersionRecord
from agent.storage.ledger import Ledger

log = structlog.get_logger("agent.fleet")

ADDED, KNOWN, ELSEWHERE = "added", "known", "elsewhere"  # a journal record's outcome


@dataclass(frozen=True, slots=True)
class Adoption:
    volume_id: str
    member_id: str
    records: int = 0  # journal records read
    added: int = 0  # recorded now: the table did not know them (or not this volume's hold)
    known: int = 0  # already recorded, on this volume
    held_elsewhere: int = 0  # recorded with another volume's copy (this one is a spare)
    retired: tuple[str, ...] = ()  # members that wrote to this volume, now marked stopped


def adopt(
    registry: Registry,
    ledger: Ledger,
    journal: Iterable[VersionRecord],
    *,
    volume_id: str,
    member_id: str,
    root: str,
    clock: Callable[[], datetime],
) -> Adoption:
    if ledger.group is not None and ledger.volume_id != volume_id:
        raise ValueError(f"a ledger for volume {ledger.volume_id}, not {volume_id}")
    counts = dict.fromkeys((ADDED, KNOWN, ELSEWHERE), 0)
    for record in journal:
        if record.volume_id != volume_id:
            continue  # a journal line written before the volume was (re)marked: not ours
        counts[_recorded(ledger, record)] += 1
    added, known, elsewhere = counts[ADDED], counts[KNOWN], counts[ELSEWHERE]
    records = added + known + elsewhere
    retired = []
    for member in registry.members()[0]:
        if member.volume_id == volume_id and member.member_id != member_id:
            if member.state != STOPPED:
                registry.announce(replace(member, state=STOPPED, paused_reason=None))
            retired.append(member.member_id)
    registry.record_adoption(volume_id, member_id, root, clock())
    adoption = Adoption(volume_id, member_id, records, added, known, elsewhere, tuple(retired))
    log.info(
        "fleet.volume_adopted",
        volume_id=volume_id,
        member=member_id,
        added=added,
        known=known,
        held_elsewhere=elsewhere,
        retired=list(retired),
    )
    return adoption


def _recorded(ledger: Ledger, record: VersionRecord) -> str:
    """Make sure the ledger names `record`'s volume as a holder of its version: `KNOWN` when
    it does, `ELSEWHERE` when another volume holds it for this replica group (or, without
    replicas, at all: this volume's copy is a kept duplicate), else `ADDED` once recorded.
    `Ledger.record` writes the item when there is none and adds this group's hold to one
    another group wrote; it never moves LATEST back to an older version."""
    volume_id = record.volume_id or ""
    seen = ledger.get_version(record.bucket, record.key, record.version_token)
    if seen is not None and held_by(seen, volume_id):
        return KNOWN
    if seen is not None and seen.holder_in(ledger.group) is not None:
        return ELSEWHERE
    if ledger.record(record):
        return ADDED
    # another writer came first meanwhile (or the item is malformed): as it is now
    again = ledger.get_version(record.bucket, record.key, record.version_token)
    return KNOWN if again is not None and held_by(again, volume_id) else ELSEWHERE
