"""`backup-agent status --fleet [--json]`: the members on this agent's queue."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.aws import build_clients
from agent.cli.common import ExitCode, StatusCode
from agent.cli.output import printable_key
from agent.config import Config, queue_name, replica_groups
from agent.errors import BackupAgentError, ConfigError
from agent.fleet.adopt import adopt
from agent.fleet.member import Member
from agent.fleet.registry import Registry
from agent.fleet.report import DEGRADED, OK, fleet_report
from agent.runtime.wiring import fleet_identity, member_ledger
from agent.storage.journal import Journal
from agent.storage.volume import Volume

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


def add_fleet_options(status: argparse.ArgumentParser) -> None:
    status.add_argument(
        "--fleet",
        action="store_true",
        help="list every agent on this queue (from the table); flag a missing heartbeat",
    )


def cmd_fleet_status(args: argparse.Namespace, config: Config) -> int:
    clients = build_clients(config)
    groups = replica_groups(config)
    queues = groups.queues if groups else [queue_name(config.queue.url)]
    members, bad = [], []
    by_group: dict[str, list[Member]] = {}
    for queue in queues:  # with replicas, every group's register
        found, problems = Registry(clients.dynamodb, config.state.table, queue).members()
        by_group[queue] = found
        members.extend(found)
        bad.extend(problems)
    now = datetime.now(UTC)
    report = fleet_report(members, bad, now)
    if groups is not None:
        report.flag_groups(by_group, now)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        for line in fleet_lines(report.to_dict()):
            print(printable_key(line))
    return {OK: StatusCode.OK, DEGRADED: StatusCode.DEGRADED}.get(report.health, StatusCode.DOWN)


def fleet_lines(report: dict[str, Any]) -> list[str]:
    lines = [f"fleet:       {report['health'].upper()}, {len(report['members'])} member(s)"]
    if report.get("replica_groups") is not None:
        lines.append(
            "replicas:    "
            + ", ".join(f"{g}: {n} beating" for g, n in report["replica_groups"].items())
        )
    for m in report["members"]:
        used = m.get("disk_used_ratio")
        lag = m.get("lag_seconds")
        state = "HEARTBEAT MISSING" if m["missing"] else m["state"]
        group = f" [{m['replica_group']}]" if m.get("replica_group") else ""
        lines.append(
            f"  {m['member_id']}{group}: {state}, volume {m['volume_id']}"
            f" ({'?' if used is None else f'{used:.0%}'} used),"
            f" AZ {m.get('availability_zone') or '?'}, version {m['version']},"
            f" heartbeat {m['heartbeat_age_seconds']:g}s ago,"
            f" lag {'?' if lag is None else f'{lag:.1f}s'}, backed up {m.get('backed_up', 0)}"
        )
    lines.extend(f"problem:     {p}" for p in report["problems"])
    return lines


def fleet_holders(config: Config, dynamodb: DynamoDBClient) -> dict[str, Member]:
    """Volume id → the member writing to it (with replicas, in any group); what could be
    read when a register cannot be (a restore names the volume all the same)."""
    groups = replica_groups(config)
    queues = groups.queues if groups else [queue_name(config.queue.url)]
    found: dict[str, Member] = {}
    try:
        for queue in queues:  # with replicas, every group's register
            found.update(Registry(dynamodb, config.state.table, queue).holders())
    except BackupAgentError:
        return found
    return found


def add_adopt_options(adopt: argparse.ArgumentParser) -> None:
    adopt.add_argument(
        "--root",
        metavar="MOUNT",
        required=True,
        help="where the departed member's volume (or one made from its snapshot) is mounted",
    )


def cmd_adopt_volume(args: argparse.Namespace, config: Config) -> int:
    volume = Volume(Path(args.root))
    adopted_id = volume.read_marker().volume_id
    own_id = Volume(config.storage.root).read_marker().volume_id
    identity = fleet_identity(own_id)
    clients = build_clients(config)
    problem = other_group(config, clients.dynamodb, adopted_id)
    if problem is not None:
        raise ConfigError([problem])
    result = adopt(
        Registry(clients.dynamodb, config.state.table, queue_name(config.queue.url)),
        # this member's replica group holds the adopted volume's copies from now on
        member_ledger(config, clients, adopted_id),
        Journal(volume.journal_dir).read_all(),
        volume_id=adopted_id,
        member_id=identity.member_id,
        root=str(volume.root),
        clock=lambda: datetime.now(UTC),
    )
    retired = ", ".join(result.retired) or "none"
    print(
        f"volume {result.volume_id} at {volume.root}: served by {result.member_id};"
        f" {result.records} journal records: {result.added} recorded now,"
        f" {result.known} already recorded, {result.held_elsewhere} held by another volume too;"
        f" members retired: {retired}"
    )
    return ExitCode.OK


def other_group(config: Config, dynamodb: DynamoDBClient, volume_id: str) -> str | None:
    """Why this member may not adopt `volume_id`: with replicas, its member registered in
    another replica group's register only (adopting it here would write this group's holds
    naming it, and leave its own group's missing); None when it may."""
    groups = replica_groups(config)
    if groups is None:
        return None
    found = [q for q in groups.queues if _registered(config, dynamodb, q, volume_id)]
    if not found or groups.own in found:
        return None
    return (
        f"queue.url: volume {volume_id} belongs to replica group {', '.join(found)}, this member"
        f" to {groups.own}: run adopt-volume on a member of {found[0]}"
    )


def _registered(config: Config, dynamodb: DynamoDBClient, queue: str, volume_id: str) -> bool:
    """Has a member of `queue`'s register written to the volume `volume_id`?"""
    members = Registry(dynamodb, config.state.table, queue).members()[0]
    return any(member.volume_id == volume_id for member in members)
