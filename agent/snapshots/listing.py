"""The agent's snapshots as EC2 lists them: found by their tags, in one region.

Retention, the snapshot metrics and `backup-restore snapshots` all start here. The tags
are checked again after EC2's filter, so a filter mistake can never widen what
retention deletes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions

from agent.aws import Clients, classify
from agent.config import Config
from agent.records import parse_time
from agent.snapshots.records import MANAGED_TAG, VOLUME_TAG, Snapshot, read_records, tag_dict

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.type_defs import FilterTypeDef


def list_snapshots(ec2: EC2Client, region: str, volume_id: str | None = None) -> list[Snapshot]:
    """The agent's snapshots in `region` (of one volume, or of every volume), oldest first."""
    filters: list[FilterTypeDef] = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}]
    if volume_id:
        filters.append({"Name": f"tag:{VOLUME_TAG}", "Values": [volume_id]})
    found: list[Snapshot] = []
    try:
        paginator = ec2.get_paginator("describe_snapshots")
        for page in paginator.paginate(OwnerIds=["self"], Filters=filters):
            for item in page.get("Snapshots", []):
                tags = tag_dict(item.get("Tags", []))
                # Checked again here: a filter typo must never widen what retention deletes.
                if tags.get(MANAGED_TAG) != "true":
                    continue
                if volume_id and tags.get(VOLUME_TAG) != volume_id:
                    continue
                found.append(Snapshot.from_ec2(item, region))
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise classify(exc, f"EC2 DescribeSnapshots in {region}") from exc
    return sorted(found, key=lambda s: (s.taken_at, s.snapshot_id))


def snapshot_listing(
    config: Config, clients: Clients, volume_id: str | None = None
) -> list[Snapshot]:
    """Every agent snapshot (of `volume_id`, or of any volume) in the region and the copy region.

    For `backup-restore snapshots`: works when the instance and volume are gone, because
    it reads EC2's tags, not the volume. Print it with `print_snapshots`.
    """
    found = list_snapshots(clients.ec2(), config.aws.region, volume_id)
    copy_to = config.snapshots.copy_to_region
    if copy_to:
        found += list_snapshots(clients.ec2(copy_to), copy_to, volume_id)
    return found


def recorded_snapshots(root: Path, volume_id: str | None = None) -> list[Snapshot]:
    """The snapshots the volume at `root` recorded (`snapshots/snapshots.jsonl`), without
    asking EC2: for `backup-restore snapshots --offline`. What retention deleted is left out;
    a copy to another region is a row of its own. A record's state is the one it was written
    with (EC2 may know better)."""
    found: list[Snapshot] = []
    for entry in read_records(root):
        snapshot_id, taken = entry.get("snapshot_id"), _time(entry.get("taken_at"))
        if not snapshot_id or taken is None or entry.get("state") == "deleted":
            continue
        volume = str(entry.get("volume_id") or "")
        if volume_id and volume != volume_id:
            continue
        position = entry.get("journal_position")
        found.append(
            Snapshot(
                snapshot_id=str(snapshot_id),
                volume_id=volume,
                region=str(entry.get("region") or ""),
                state=str(entry.get("state") or ""),
                taken_at=taken,
                journal_position=str(position) if position else None,
            )
        )
        copy_id, copy_region = entry.get("copy_snapshot_id"), entry.get("copy_region")
        if copy_id and copy_region:
            found.append(
                Snapshot(
                    snapshot_id=str(copy_id),
                    volume_id=volume,
                    region=str(copy_region),
                    state="copied",
                    taken_at=taken,
                    journal_position=str(position) if position else None,
                    source_snapshot_id=str(snapshot_id),
                )
            )
    return sorted(found, key=lambda s: (s.taken_at, s.snapshot_id))


def _time(value: object) -> datetime | None:
    try:
        return parse_time(str(value)) if value else None
    except ValueError:
        return None  # a record written by hand, or torn: not a snapshot to show
