"""`backup-agent COMMAND --config FILE`: the operator's entry point.

Exit codes: the table in agent/cli/common.py (0 ok, 1 failure at run time, 2 usage or
configuration error, 3 backup volume not ready).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import structlog

from agent import __version__, logs
from agent.aws import build_clients
from agent.cli.common import ExitCode, StatusCode, exit_code_for, guarded, print_problems
from agent.cli.fleet import (
    add_adopt_options,
    add_fleet_options,
    cmd_adopt_volume,
    cmd_fleet_status,
)
from agent.cli.output import describe_run, printable_key, status_lines
from agent.cli.rejected_config import report_rejected_config
from agent.config import (
    Config,
    add_config_option,
    environment_problems,
    load_config,
    resolve_config_path,
)
from agent.errors import BackupAgentError, ConfigError, VolumeNotReady
from agent.lifecycle.context import LifecycleContext, job_lock
from agent.lifecycle.gc import GarbageCollector
from agent.lifecycle.reconcile import Reconciler
from agent.lifecycle.reindex import reindex
from agent.lifecycle.retention import Retention
from agent.lifecycle.scrub import Scrubber
from agent.monitoring.metrics import resolve_dimensions
from agent.operations import alarms
from agent.operations import status as agent_status
from agent.operations.dashboard import Dashboard
from agent.operations.iam import policy_document, trust_document
from agent.operations.online_check import check_online
from agent.runtime.daemon import Daemon
from agent.runtime.wiring import open_lifecycle_context, snapshot_manager
from agent.storage.journal import Journal
from agent.storage.volume import Volume

R = TypeVar("R")

log = structlog.get_logger("agent.cli")

Command = Callable[[argparse.Namespace, Config], int]


def main(argv: Sequence[str] | None = None) -> int:
    return guarded("backup-agent", lambda: _main(argv))


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return ExitCode.USAGE
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        if args.handler is cmd_run:
            _alert_rejected_config(path, exc.problems)
        return ExitCode.USAGE
    logs.configure(config.logging.level, config.logging.format)
    args.config_path = path
    try:
        result: int = args.handler(args, config)
        return result
    except VolumeNotReady as exc:
        print(f"backup-agent: backup volume not ready: {printable_key(exc)}", file=sys.stderr)
        return exit_code_for(exc)
    except ConfigError as exc:
        _print_problems(path, exc.problems)
        return exit_code_for(exc)
    except BackupAgentError as exc:
        print(f"backup-agent: {printable_key(exc)}", file=sys.stderr)
        return exit_code_for(exc)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"backup-agent {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Command, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_config_option(sub)
        sub.set_defaults(handler=handler)
        return sub

    command("run", cmd_run, "Run the agent in the foreground (what systemd starts).")
    check = command("check-config", cmd_check_config, "Validate the configuration; exit 0 or 2.")
    check.add_argument(
        "--online",
        action="store_true",
        help="also check AWS (credentials, region, queue and redrive policy, table, buckets"
        " and their notifications) and the volume (marker, writable)",
    )
    init = command("init-volume", cmd_init_volume, "Mark the backup root as a backup volume.")
    init.add_argument("--volume-id", help="an id to record (default: a new random id)")
    init.add_argument(
        "--force",
        action="store_true",
        help="mark the root even when it is neither empty nor a mount point",
    )
    reconcile = command(
        "reconcile", cmd_reconcile, "List the buckets and back up what the ledger lacks."
    )
    reconcile.add_argument("--dry-run", action="store_true", help="report, back up nothing")
    retention = command("retention", cmd_retention, "Expire versions the retention policy drops.")
    retention.add_argument("--dry-run", action="store_true", help="report, expire nothing")
    gc = command("gc", cmd_gc, "Remove copies no record references (after the grace period).")
    gc.add_argument("--dry-run", action="store_true", help="report what would go and its size")
    command("scrub", cmd_scrub, "Verify the next share of stored copies; heal bad ones from S3.")
    iam = command(
        "iam-policy", cmd_iam_policy, "Print the least-privilege IAM policy for this config."
    )
    iam.add_argument(
        "--role-document",
        action="store_true",
        help="print the EC2 instance-profile trust policy instead",
    )
    iam.add_argument(
        "--without-restore",
        action="store_true",
        help="operator role: leave out writing restored objects back to the buckets",
    )
    iam.add_argument(
        "--role",
        choices=("agent", "operator"),
        default="agent",
        help="agent: the instance role (default); operator: bootstrap, alarms, dashboard,"
        " reindex, restore --to-s3, share, mount-snapshot",
    )
    iam.add_argument(
        "--volume-id",
        metavar="VOL",
        help="the backup volume the snapshot statements name, when storage.volume_id is unset",
    )
    alarms = command("alarms", cmd_alarms, "Create or update the CloudWatch alarms (idempotent).")
    alarms.add_argument("--dry-run", action="store_true", help="show the changes, make none")
    dashboard = command(
        "dashboard", cmd_dashboard, "Create or update the CloudWatch dashboard (idempotent)."
    )
    dashboard.add_argument("--dry-run", action="store_true", help="show the change, make none")
    reindex = command(
        "reindex", cmd_reindex, "Rebuild the DynamoDB table from the volume's journal."
    )
    reindex.add_argument(
        "--root", metavar="MOUNT", help="read the journal of another copy of the volume"
    )
    reindex.add_argument("--workers", type=int, default=8, help="parallel writes (default 8)")
    snap = command("snapshot", cmd_snapshot, "Take an EBS snapshot of the backup volume now.")
    snap.add_argument(
        "--dry-run", action="store_true", help="show the volume, tags and retention; change nothing"
    )
    status = command(
        "status",
        cmd_status,
        "Show the agent's health (works while it is stopped); exit 0 ok, 1 degraded, 2 down.",
    )
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.add_argument(
        "--offline", action="store_true", help="do not ask SQS for the queue depths"
    )
    add_fleet_options(status)
    add_adopt_options(
        command(
            "adopt-volume",
            cmd_adopt_volume,
            "Serve a departed fleet member's volume from this member (docs/fleet.md).",
        )
    )
    return parser


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    return Daemon(config, build_clients(config), config_path=args.config_path).run()


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    problems = environment_problems(config)
    if problems:
        _print_problems(args.config_path, problems)
        return ExitCode.USAGE
    if args.online:
        report = check_online(config, build_clients(config))
        for note in report.notes:
            print(printable_key(note))
        if report.problems:
            print_problems(sys.stderr, f"{args.config_path}: online check failed", report.problems)
            return ExitCode.USAGE
    print(f"{printable_key(args.config_path)}: OK" + (" (online)" if args.online else ""))
    return ExitCode.OK


def cmd_init_volume(args: argparse.Namespace, config: Config) -> int:
    volume = Volume(config.storage.root)
    if args.force and volume.root.is_dir() and not volume.marker_path.exists():
        problem = volume.not_fresh()
        if problem:
            print(
                f"backup-agent: WARNING: --force: {printable_key(problem)}; marking it as a"
                " backup volume anyway. The agent will write objects/, tmp/ and journal/"
                " here, beside what is already there.",
                file=sys.stderr,
            )
    marker = volume.initialise(args.volume_id, force=args.force)
    print(f"{printable_key(config.storage.root)}: backup volume {printable_key(marker.volume_id)}")
    return ExitCode.OK


def _locked_job(
    config: Config, job: str, run: Callable[[LifecycleContext], R], *, dry_run: bool = False
) -> R:
    """Wire the lifecycle context and run one job under its volume lock (JobBusy if held).

    A real run's outcome is recorded for `status`; a dry run's is not."""

    ctx = open_lifecycle_context(config, build_clients(config))
    with job_lock(ctx.volume, job, record=not dry_run):
        return run(ctx)


def cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(
        config,
        "reconcile",
        lambda ctx: Reconciler.from_context(ctx).run_once(dry_run=args.dry_run),
        dry_run=args.dry_run,
    )
    verb = "would back up" if args.dry_run else "backed up"
    print(
        f"reconcile: {report.keys} keys, {verb} {report.backed_up} ({report.bytes} bytes),"
        f" {report.tombstoned} deletes, {report.up_to_date} up to date, {report.failed} failed"
    )
    for bucket, key, version in report.would_back_up:
        shown = f"s3://{bucket}/{key}" + (f" ({version})" if version else "")
        print(f"  {printable_key(shown)}")
    return ExitCode.FAILURE if report.failed else ExitCode.OK


def cmd_retention(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(
        config,
        "retention",
        lambda ctx: Retention.from_context(ctx).run_once(dry_run=args.dry_run),
        dry_run=args.dry_run,
    )
    verb = "would expire" if args.dry_run else "expired"
    print(
        f"retention: {report.keys} keys, {report.versions} versions, {verb} {report.expired}"
        f" ({report.keys_expired} whole keys, {report.expired_stored_bytes} stored bytes"
        " referenced; gc frees what no other version shares)"
    )
    for record in report.would_expire:
        print(f"  {printable_key(f's3://{record.bucket}/{record.key} {record.version_token}')}")
    return ExitCode.OK


def cmd_gc(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(
        config,
        "gc",
        lambda ctx: GarbageCollector.from_context(ctx).run_once(dry_run=args.dry_run),
        dry_run=args.dry_run,
    )
    if args.dry_run:
        for sha, size in report.would_remove:
            print(f"  {sha} {size} bytes")
        print(f"gc: would remove {len(report.would_remove)} copies, {report.bytes_freed} bytes")
    else:
        print(f"gc: removed {report.removed} copies, freed {report.bytes_freed} bytes")
    return ExitCode.OK


def cmd_scrub(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(config, "scrub", lambda ctx: Scrubber.from_context(ctx).run_once())
    print(
        f"scrub: checked {report.checked} of {report.total} copies, {report.corrupt} corrupt,"
        f" {report.healed} healed, {report.unrecoverable} unrecoverable"
    )
    return ExitCode.FAILURE if report.unrecoverable else ExitCode.OK


def cmd_iam_policy(args: argparse.Namespace, config: Config) -> int:
    if args.role_document:
        document = trust_document(config)
    else:
        document = policy_document(
            config,
            role=args.role,
            restore_to_s3=not args.without_restore,
            volume_id=args.volume_id,
        )
    print(json.dumps(document, indent=2))
    return ExitCode.OK


def cmd_alarms(args: argparse.Namespace, config: Config) -> int:
    cloudwatch = build_clients(config).cloudwatch()
    return alarms.run(config, cloudwatch, resolve_dimensions(config), args.dry_run)


def cmd_dashboard(args: argparse.Namespace, config: Config) -> int:
    board = Dashboard(build_clients(config).cloudwatch(), config)
    action = board.apply(resolve_dimensions(config), dry_run=args.dry_run)
    print(f"{action:<16} dashboard {board.name}")
    return ExitCode.OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "fleet", False):
        return cmd_fleet_status(args, config)
    sqs = None if args.offline else build_clients(config).sqs
    status = agent_status.gather(config, args.config_path, sqs)
    if args.json:
        print(json.dumps(status.report, indent=2, default=str))
    else:
        for line in status_lines(status.report):
            print(printable_key(line))
    return {
        agent_status.OK: StatusCode.OK,
        agent_status.DEGRADED: StatusCode.DEGRADED,
    }.get(status.health, StatusCode.DOWN)


def _alert_rejected_config(path: Path, problems: list[str]) -> None:
    """Best effort: the agent cannot start, so tell the operator through the alert channels."""

    logs.configure()  # the config's own logging settings are not usable
    try:
        report_rejected_config(path, problems)
    except Exception as exc:  # noqa: BLE001 - the exit code and stderr already say it
        log.debug("alert.config_rejected_failed", error=str(exc))


def cmd_reindex(args: argparse.Namespace, config: Config) -> int:
    volume = Volume(Path(args.root) if args.root else config.storage.root)
    volume.read_marker()
    report = reindex(
        Journal(volume.journal_dir).read_all(),
        build_clients(config).dynamodb,
        config.state.table,
        workers=max(1, args.workers),
    )
    created = " (table created)" if report.table_created else ""
    print(
        f"{config.state.table}{created}: {report.records} journal records,"
        f" {report.added} added, {report.known} already known"
    )
    return ExitCode.OK


def cmd_snapshot(args: argparse.Namespace, config: Config) -> int:
    Volume(config.storage.root).read_marker()  # never snapshot an unmounted root
    run = snapshot_manager(config, build_clients(config)).take(dry_run=args.dry_run)
    describe_run(run)
    return ExitCode.OK if run.ok else ExitCode.FAILURE


def _print_problems(path: Path, problems: list[str]) -> None:
    print_problems(sys.stderr, f"{path}: invalid configuration", problems)


if __name__ == "__main__":
    sys.exit(main())
