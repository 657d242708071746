"""`scripts/mount-snapshot SNAPSHOT_ID`: a snapshot of the backup volume, mounted read-only.

The work is agent/snapshots/mount.py's `SnapshotMounter`; this is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from agent import logs
from agent.aws import build_clients, region_clients
from agent.cli.common import (
    ExitCode,
    HelpFormatter,
    add_global_options,
    examples,
    exit_code_for,
    guarded,
    log_level,
    print_json,
    s3_key,
)
from agent.cli.output import PrintableLines, printable_key
from agent.config import load_config
from agent.errors import BackupAgentError, ConfigError
from agent.imds import Imds
from agent.records import parse_time
from agent.restore.source import Selector, select
from agent.snapshots.holding import snapshot_holding
from agent.snapshots.listing import list_snapshots
from agent.snapshots.mount import SnapshotMounter
from agent.storage.ledger import Ledger

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mount-snapshot",
        description="Mount an EBS snapshot of the backup volume read-only.",
        formatter_class=HelpFormatter,
        epilog=examples(
            "backup-mount-snapshot snap-0123456789abcdef0 --dry-run",
            "backup-mount-snapshot snap-0123456789abcdef0 --config /etc/backup-agent/config.yaml",
            "backup-mount-snapshot --key reports/q3.pdf --at 2026-11-23T10:00:00Z --dry-run",
        ),
    )
    parser.add_argument(
        "snapshot_id",
        metavar="SNAPSHOT_ID",
        nargs="?",
        help="the snapshot to mount (backup-restore snapshots lists them); or --key",
    )
    add_global_options(
        parser,
        top=True,
        config_help="read aws.region / endpoint_url from it (default: none); --key: the table",
    )
    find = parser.add_argument_group(
        "instead of SNAPSHOT_ID: the snapshot that holds a version (any member's volume)"
    )
    find.add_argument("--key", metavar="K", type=s3_key, help="the backed-up key (needs --config)")
    which = find.add_mutually_exclusive_group()
    which.add_argument("--version", metavar="V", help="an S3 version id or a version_token")
    which.add_argument(
        "--at", metavar="TIMESTAMP", help="the version the bucket held then (ISO-8601)"
    )
    find.add_argument("--source-bucket", metavar="B", help="default: the configured one")
    parser.add_argument("--region", help="default: the config's, then the instance's region")
    parser.add_argument("--az", help="Availability Zone (default: this instance's)")
    parser.add_argument("--instance-id", help="attach to this instance (default: this one)")
    parser.add_argument("--device", help="EC2 device name (default: the first free /dev/sd[f-p])")
    parser.add_argument(
        "--mount-root", default="/mnt", metavar="ROOT", help="mount at ROOT/snapshot-<id>"
    )
    parser.add_argument(
        "--volume-type", default="gp3", help="EBS type of the volume made from it (default gp3)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--no-mount", action="store_true", help="create and attach only")
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    ec2: EC2Client | None = None,
    imds: Imds | None = None,
    dynamodb: DynamoDBClient | None = None,
) -> int:
    return guarded("mount-snapshot", lambda: _main(argv, ec2, imds, dynamodb))


def _main(
    argv: Sequence[str] | None,
    ec2: EC2Client | None,
    imds: Imds | None,
    dynamodb: DynamoDBClient | None,
) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.snapshot_id is None) == (args.key is None):
        parser.error("give a SNAPSHOT_ID, or --key K (the snapshot holding its version)")
    if (args.version or args.at or args.source_bucket) and args.key is None:
        parser.error("--version, --at and --source-bucket go with --key")
    logs.configure(log_level(args, "INFO"))  # on stderr: stdout is the plan (or the JSON)
    try:
        if ec2 is None:
            ec2, imds = _clients(args)
        quiet = args.json or args.quiet  # --json: one document at the end, nothing else
        sink = io.StringIO() if quiet else sys.stdout
        out = cast(TextIO, PrintableLines(sink))  # the mounter calls only write()
        found: dict[str, Any] | None = None
        snapshot_id = args.snapshot_id
        if args.key is not None:
            found = _holding(args, ec2, dynamodb)
            snapshot_id = found["snapshot_id"]
            out.write(
                f"version {found['version']} of s3://{found['bucket']}/{found['key']}"
                f" (stored {found['stored_at']}) is on volume {found['volume_id']};"
                f" snapshot {snapshot_id} (taken {found['taken_at']}) holds it\n"
            )
        mounter = SnapshotMounter(ec2, imds=imds, out=out)
        plan = mounter.plan(
            snapshot_id,
            instance_id=args.instance_id,
            availability_zone=args.az,
            device=args.device,
            mount_root=Path(args.mount_root),
            volume_type=args.volume_type,
        )
        mounter.describe(plan)
        volume_id = None
        if args.dry_run:
            print("dry run: nothing created", file=sink)
        else:
            volume_id = mounter.create_and_attach(plan)
            if not args.no_mount:
                mounter.mount(plan, volume_id)
            mounter.next_steps(plan, volume_id, mounted=not args.no_mount)
        if args.json:
            print_json(
                {
                    "plan": dataclasses.asdict(plan),
                    "dry_run": args.dry_run,
                    "volume_id": volume_id,
                    "mounted": not (args.dry_run or args.no_mount),
                    **({"found": found} if found else {}),
                }
            )
        return ExitCode.OK
    except BackupAgentError as exc:  # ConfigError (exit 2) included: the table in common.py
        print(f"mount-snapshot: {printable_key(exc)}", file=sys.stderr)
        return exit_code_for(exc)


def _holding(
    args: argparse.Namespace, ec2: EC2Client, dynamodb: DynamoDBClient | None
) -> dict[str, Any]:
    """--key: the version asked for (from the ledger), the volume that holds it, and the
    newest completed snapshot of that volume taken after it was stored."""
    if not args.config:
        raise ConfigError(["--key: --config is needed (the ledger's table, the bucket)"])
    config = load_config(args.config)
    bucket = args.source_bucket or (config.buckets[0] if len(config.buckets) == 1 else None)
    if bucket is None or bucket not in config.buckets:
        raise ConfigError(
            [f"--source-bucket: one of the configured buckets ({', '.join(config.buckets)})"]
        )
    try:
        at = parse_time(args.at) if args.at else None
    except ValueError:
        raise ConfigError([f"--at {args.at!r}: not an ISO-8601 time"]) from None
    table = dynamodb or build_clients(config).dynamodb
    records = Ledger(table, config.state.table).versions(bucket, args.key)
    choice = select(args.key, records, Selector(version=args.version, at=at, include_deleted=True))
    record = choice.record
    if record is None or record.deleted or not record.sha256:
        why = choice.reason or "no stored copy of that version"
        raise BackupAgentError(f"s3://{bucket}/{args.key}: {why}")
    stored_at = parse_time(record.backup_time)
    snapshots = list_snapshots(ec2, ec2.meta.region_name, record.volume_id)
    snapshot = snapshot_holding(snapshots, record.volume_id, stored_at)
    version = record.version_id or record.version_token
    if snapshot is None:
        raise BackupAgentError(
            f"s3://{bucket}/{args.key} version {version} is on volume {record.volume_id}"
            f" (stored {record.backup_time}): no completed snapshot of it taken since"
            f" ({len(snapshots)} snapshot(s) of that volume); restore it on the member"
            " that serves the volume, or after its next snapshot"
        )
    return {
        "bucket": bucket,
        "key": args.key,
        "version": version,
        "version_token": record.version_token,
        "volume_id": record.volume_id,
        "stored_at": record.backup_time,
        "snapshot_id": snapshot.snapshot_id,
        "taken_at": snapshot.taken_at.isoformat(),
    }


def _clients(args: argparse.Namespace) -> tuple[EC2Client, Imds]:
    imds = Imds()
    region = args.region
    endpoint = None
    if args.config:
        config = load_config(args.config)
        region = region or config.aws.region
        endpoint = config.aws.endpoint_url
    if region is None:
        region = imds.region()
    return region_clients(region, endpoint).ec2(), imds
