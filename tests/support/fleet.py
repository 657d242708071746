"""Test helper: members of a fleet on the conftest's one table, each with a volume of its own.

A member's volume id is its volume folder's name (`tmp_path/vol-a` is `vol-a`). Without a
`group` a member writes through `make_service`'s ledger (one queue, no replica group); with
one, through a ledger of that replica group naming the member's volume (`fleet.replicas`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.pipeline.backup import BackupService
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import TABLE
from tests.support.service import make_service

Member = tuple[Volume, BackupService]


def member_volume(tmp_path: Path, volume_id: str) -> Volume:
    """An initialised, open volume in `tmp_path/<volume_id>`, named `volume_id`."""
    root = tmp_path / volume_id
    root.mkdir()
    volume = Volume(root)
    volume.initialise(volume_id)
    volume.open()
    return volume


def group_ledger(aws: Any, group: str, volume: Volume) -> Ledger:
    """The ledger a member of replica `group` writes through (it names the member's volume)."""
    return Ledger(aws.dynamodb, TABLE, group=group, volume_id=volume.root.name)


def member_service(
    aws: Any, volume: Volume, *, group: str | None = None, **overrides: Any
) -> BackupService:
    """The backup service of the member holding `volume` (in replica `group`, if given)."""
    if group is not None:
        overrides.setdefault("ledger", group_ledger(aws, group, volume))
    return make_service(aws, volume, volume_id=volume.root.name, **overrides)


def two_members(
    aws: Any,
    tmp_path: Path,
    names: tuple[str, str] = ("vol-a", "vol-b"),
    groups: tuple[str | None, str | None] = (None, None),
) -> tuple[Member, Member]:
    """Two members on the one table: `(volume, service)` each, named `names`."""
    members = []
    for name, group in zip(names, groups, strict=True):
        volume = member_volume(tmp_path, name)
        members.append((volume, member_service(aws, volume, group=group)))
    return members[0], members[1]
