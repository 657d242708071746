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
from typing import TYPE_CHECKING, TextIO, cast

from agent import logs
from agent.aws import region_clients
from agent.cli.common import (
    ExitCode,
    HelpFormatter,
    add_global_options,
    examples,
    exit_code_for,
    guarded,
    log_level,
    print_json,
)
from agent.cli.output import PrintableLines, printable_key
from agent.config import load_config
from agent.errors import BackupAgentError
from agent.imds import Imds
from agent.snapshots.mount import SnapshotMounter

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mount-snapshot",
        description="Mount an EBS snapshot of the backup volume read-only.",
        formatter_class=HelpFormatter,
        epilog=examples(
            "backup-mount-snapshot snap-0123456789abcdef0 --dry-run",
            "backup-mount-snapshot snap-0123456789abcdef0 --config /etc/backup-agent/config.yaml",
        ),
    )
    parser.add_argument(
        "snapshot_id",
        metavar="SNAPSHOT_ID",
        help="the snapshot to mount (backup-restore snapshots lists them)",
    )
    add_global_options(
        parser, top=True, config_help="read aws.region / endpoint_url from it (default: none)"
    )
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
    argv: Sequence[str] | None = None, *, ec2: EC2Client | None = None, imds: Imds | None = None
) -> int:
    return guarded("mount-snapshot", lambda: _main(argv, ec2, imds))


def _main(argv: Sequence[str] | None, ec2: EC2Client | None, imds: Imds | None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(log_level(args, "INFO"))  # on stderr: stdout is the plan (or the JSON)
    try:
        if ec2 is None:
            ec2, imds = _clients(args)
        quiet = args.json or args.quiet  # --json: one document at the end, nothing else
        sink = io.StringIO() if quiet else sys.stdout
        out = cast(TextIO, PrintableLines(sink))  # the mounter calls only write()
        mounter = SnapshotMounter(ec2, imds=imds, out=out)
        plan = mounter.plan(
            args.snapshot_id,
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
                }
            )
        return ExitCode.OK
    except BackupAgentError as exc:  # ConfigError (exit 2) included: the table in common.py
        print(f"mount-snapshot: {printable_key(exc)}", file=sys.stderr)
        return exit_code_for(exc)


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
