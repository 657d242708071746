"""A member leaves for good: its volume, attached to another member, is served from there.

The ledger's records name the *volume* that holds each copy (the id in the volume's marker,
which moves with the volume, or with a volume made from its snapshot), so adopting a volume
rewrites none of them. It does three things: records its journal's versions the table does
not know (a member killed between its journal line and its ledger write), records in the
fleet register which member now serves the volume (so a restore elsewhere names the right
instance), and marks the departed member `stopped` so its missing heartbeat stops alarming.
Nothing is copied again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from agent.fleet.member import STOPPED
from agent.fleet.registry import Registry
from agent.records import VersionRecord
from agent.storage.ledger import Ledger

log = structlog.get_logger("agent.fleet")


@dataclass(frozen=True, slots=True)
class Adoption:
    volume_id: str
    member_id: str
    records: int = 0  # journal records read
    added: int = 0  # recorded now: the table did not know them
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
    records = added = known = elsewhere = 0
    for record in journal:
        if record.volume_id != volume_id:
            continue  # a journal line written before the volume was (re)marked: not ours
        records += 1
        recorded = ledger.get_version(record.bucket, record.key, record.version_token)
        if recorded is None:
            ledger.record(record)
            added += 1
        elif recorded.volume_id == volume_id:
            known += 1
        else:
            elsewhere += 1
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
