"""`backup-agent COMMAND --config FILE`: the operator's entry point.

Exit codes: the table in agent/cli/common.py (0 ok, 1 failure at run time, 2 usage or
configuration error, 3 backup volume not ready).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import structlog

from agent import __version__, logs
from agent.audit import actions
from agent.audit.auditor import Auditor
from agent.audit.identity import whoami
from agent.audit.inventory import table_ddl
from agent.audit.records import Actor, AuditRecord
from agent.aws import Clients, build_clients
from agent.cli.common import (
    ExitCode,
    HelpFormatter,
    StatusCode,
    add_command,
    add_global_options,
    add_workers_option,
    examples,
    exit_code_for,
    guarded,
    log_level,
    print_json,
    print_problems,
)
from agent.cli.fleet import (
    add_adopt_options,
    add_fleet_options,
    cmd_adopt_volume,
    cmd_fleet_status,
)
from agent.cli.output import describe_run, printable_key, status_lines
from agent.cli.rejected_config import report_rejected_config
from agent.config import Config, environment_problems, load_config, resolve_config_path
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
from agent.operations.dashboard import Dashboard, planned_body
from agent.operations.iam import policy_document, trust_document
from agent.operations.online_check import check_online, region_problem
from agent.records import Rejection
from agent.runtime.daemon import Daemon
from agent.runtime.wiring import (
    audit_trail,
    inventory_export,
    open_lifecycle_context,
    snapshot_manager,
)
from agent.storage.grow import REQUEST_NAME, grow_filesystem, trusted_config
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
    logs.configure(log_level(args, config.logging.level), config.logging.format)
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
    parser = argparse.ArgumentParser(
        prog="backup-agent",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
        epilog=examples(
            "backup-agent --config /etc/backup-agent/config.yaml check-config --online",
            "backup-agent status --json",
            "backup-agent reconcile --dry-run",
            "backup-agent -q scrub",
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"backup-agent {__version__}",
        help="print the version and exit",
    )
    add_global_options(parser, top=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, handler: Command, help_text: str, *example_lines: str
    ) -> argparse.ArgumentParser:
        return add_command(commands, name, handler, help_text, *example_lines)

    command("run", cmd_run, "Run the agent in the foreground (what systemd starts).")
    check = command(
        "check-config",
        cmd_check_config,
        "Validate the configuration; exit 0 or 2.",
        "backup-agent check-config --config ./config.yaml",
        "backup-agent check-config --online --json",
    )
    check.add_argument(
        "--online",
        action="store_true",
        help="also check AWS (credentials, region, queue and redrive policy, table, buckets"
        " and their notifications) and the volume (marker, writable)",
    )
    init = command(
        "init-volume",
        cmd_init_volume,
        "Mark the backup root as a backup volume.",
        "backup-agent init-volume",
    )
    init.add_argument("--volume-id", help="an id to record (default: a new random id)")
    init.add_argument(
        "--force",
        action="store_true",
        help="mark the root even when it is neither empty nor a mount point",
    )
    reconcile = command(
        "reconcile",
        cmd_reconcile,
        "List the buckets and back up what the ledger lacks.",
        "backup-agent reconcile --dry-run",
        "backup-agent reconcile --json",
    )
    reconcile.add_argument("--dry-run", action="store_true", help="report, back up nothing")
    retention = command(
        "retention",
        cmd_retention,
        "Expire versions the retention policy drops.",
        "backup-agent retention --dry-run",
    )
    retention.add_argument("--dry-run", action="store_true", help="report, expire nothing")
    gc = command(
        "gc",
        cmd_gc,
        "Remove copies no record references (after the grace period).",
        "backup-agent gc --dry-run --json",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would go and its size")
    command(
        "scrub",
        cmd_scrub,
        "Verify the next share of stored copies; heal bad ones from S3.",
        "backup-agent scrub --json",
    )
    iam = command(
        "iam-policy",
        cmd_iam_policy,
        "Print the least-privilege IAM policy for this config (JSON).",
        "backup-agent iam-policy > agent-policy.json",
        "backup-agent iam-policy --role operator > operator-policy.json",
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
    alarms = command(
        "alarms",
        cmd_alarms,
        "Create or update the CloudWatch alarms (idempotent).",
        "backup-agent alarms --dry-run",
    )
    alarms.add_argument("--dry-run", action="store_true", help="show the changes, make none")
    dashboard = command(
        "dashboard",
        cmd_dashboard,
        "Create or update the CloudWatch dashboard (idempotent).",
        "backup-agent dashboard --dry-run",
    )
    dashboard.add_argument(
        "--dry-run",
        action="store_true",
        help="print the dashboard body (JSON, this instance's row) without calling AWS",
    )
    reindex = command(
        "reindex",
        cmd_reindex,
        "Rebuild the DynamoDB table from the volume's journal.",
        "backup-agent reindex --workers 16",
        "backup-agent reindex --root /mnt/snapshot-snap-0123456789abcdef0",
    )
    reindex.add_argument(
        "--root", metavar="MOUNT", help="read the journal of another copy of the volume"
    )
    add_workers_option(reindex, "parallel writes (default 8)", default=8)
    snap = command(
        "snapshot",
        cmd_snapshot,
        "Take an EBS snapshot of the backup volume now.",
        "backup-agent snapshot --dry-run",
    )
    snap.add_argument(
        "--dry-run", action="store_true", help="show the volume, tags and retention; change nothing"
    )
    _add_inventory_parser(command)
    status = command(
        "status",
        cmd_status,
        "Show the agent's health (works while it is stopped); exit 0 ok, 1 degraded, 2 down.",
        "backup-agent status",
        "backup-agent status --json --offline",
    )
    status.add_argument(
        "--offline", action="store_true", help="do not ask SQS for the queue depths"
    )
    add_fleet_options(status)
    add_adopt_options(
        command(
            "adopt-volume",
            cmd_adopt_volume,
            "Serve a departed fleet member's volume from this member (docs/fleet.md).",
            "backup-agent adopt-volume --root /mnt/backups-of-i-0123",
        )
    )
    grow = command(
        "grow-filesystem",
        cmd_grow_filesystem,
        "As root (backup-agent-grow.service): grow the backup filesystem to its volume's size.",
        "sudo backup-agent grow-filesystem --config /etc/backup-agent/config.yaml",
    )
    grow.add_argument(
        "--request",
        type=Path,
        default=Path("/var/lib/backup-agent") / REQUEST_NAME,
        help="the agent's request file, removed (never read) once the command ran",
    )
    return parser


def cmd_grow_filesystem(args: argparse.Namespace, config: Config) -> int:
    """The command comes from the root-owned config or the mount's filesystem type."""
    try:
        trusted_config(args.config_path)
        command = grow_filesystem(
            config.storage.root,
            config.storage.auto_grow.command,
            request=args.request,
            mounts=Path("/proc/self/mounts").read_text(encoding="utf-8"),
        )
    finally:
        args.request.unlink(missing_ok=True)  # else the .path unit triggers again at once
    print(f"{printable_key(config.storage.root)}: grown ({' '.join(command)})")
    return ExitCode.OK


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    return Daemon(config, build_clients(config), config_path=args.config_path).run()


def cmd_check_config(args: argparse.Namespace, config: Config) -> int:
    problems = environment_problems(config)
    disagrees = region_problem(config)
    if disagrees:
        problems.append(disagrees)
    notes: list[str] = []
    online = not problems and args.online  # AWS is asked only about a file that is right
    if online:
        report = check_online(config, build_clients(config))
        problems, notes = report.problems, report.notes
    if args.json:
        print_json(
            {
                "config": str(args.config_path),
                "online": args.online,
                "ok": not problems,
                "problems": problems,
                "notes": notes,
            }
        )
        return ExitCode.USAGE if problems else ExitCode.OK
    if problems and not online:
        _print_problems(args.config_path, problems)
        return ExitCode.USAGE
    if not args.quiet:
        for note in notes:
            print(printable_key(note))
    if problems:
        print_problems(sys.stderr, f"{args.config_path}: online check failed", problems)
        return ExitCode.USAGE
    if not args.quiet:
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
    if args.json:
        print_json({"root": str(config.storage.root), "volume_id": marker.volume_id})
    else:
        root = printable_key(config.storage.root)
        print(f"{root}: backup volume {printable_key(marker.volume_id)}")
    return ExitCode.OK


def _locked_job(
    config: Config,
    job: str,
    run: Callable[[LifecycleContext], R],
    *,
    dry_run: bool = False,
    audited: Callable[[R, Actor, datetime], AuditRecord] | None = None,
) -> R:
    """Wire the lifecycle context and run one job under its volume lock (JobBusy if held).

    A real run's outcome is recorded for `status`, and in the audit trail when `audited`
    makes its record; a dry run's is not."""

    clients = build_clients(config)
    ctx = open_lifecycle_context(config, clients)
    with job_lock(ctx.volume, job, record=not dry_run):
        if audited is None or dry_run:
            return run(ctx)
        return _auditor(config, clients, ctx.volume.root).around(job, lambda: run(ctx), audited)


def _auditor(config: Config, clients: Clients, root: Path) -> Auditor:
    """This command's audit trail; the STS identity is asked once, at its first record."""
    return Auditor(audit_trail(config, clients, root), lambda: whoami(clients.sts()))


def cmd_reconcile(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(
        config,
        "reconcile",
        lambda ctx: Reconciler.from_context(ctx).run_once(dry_run=args.dry_run),
        dry_run=args.dry_run,
    )
    if args.json:
        document = dataclasses.asdict(report)
        document["would_back_up"] = [
            {"bucket": bucket, "key": key, "version_id": version}
            for bucket, key, version in report.would_back_up
        ]
        print_json(document)
        return ExitCode.FAILURE if report.failed else ExitCode.OK
    verb = "would back up" if args.dry_run else "backed up"
    replicas = f" of which {report.replicated} for this replica group" if report.replicated else ""
    print(
        f"reconcile: {report.keys} keys, {verb} {report.backed_up} ({report.bytes} bytes)"
        f"{replicas}, {report.tombstoned} deletes, {report.up_to_date} up to date,"
        f" {report.failed} failed"
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
        audited=actions.retention,
    )
    if args.json:
        document = dataclasses.asdict(report)
        for name in ("would_expire", "expired_records"):
            document[name] = [
                {"bucket": r.bucket, "key": r.key, "version_token": r.version_token}
                for r in getattr(report, name)
            ]
        print_json(document)
        return ExitCode.OK
    verb = "would expire" if args.dry_run else "expired"
    print(
        f"retention: {report.keys} keys, {report.versions} versions, {verb} {report.expired}"
        f" ({report.keys_expired} whole keys, {report.expired_stored_bytes} stored bytes"
        " referenced; gc frees what no other version shares)"
    )
    for record in report.would_expire:
        print(f"  {printable_key(f's3://{record.bucket}/{record.key} {record.version_token}')}")
    return _rejected(report.rejected, ExitCode.OK)


def cmd_gc(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(
        config,
        "gc",
        lambda ctx: GarbageCollector.from_context(ctx).run_once(dry_run=args.dry_run),
        dry_run=args.dry_run,
        audited=actions.gc,
    )
    if args.json:
        document = dataclasses.asdict(report)
        for name in ("would_remove", "removed_copies"):
            document[name] = [{"sha256": sha, "bytes": size} for sha, size in getattr(report, name)]
        print_json(document)
        return ExitCode.OK
    if args.dry_run:
        for sha, size in report.would_remove:
            print(f"  {sha} {size} bytes")
        print(f"gc: would remove {len(report.would_remove)} copies, {report.bytes_freed} bytes")
    else:
        print(f"gc: removed {report.removed} copies, freed {report.bytes_freed} bytes")
    return _rejected(report.rejected, ExitCode.OK)


def cmd_scrub(args: argparse.Namespace, config: Config) -> int:
    report = _locked_job(
        config, "scrub", lambda ctx: Scrubber.from_context(ctx).run_once(), audited=actions.scrub
    )
    if args.json:
        document = dataclasses.asdict(report)
        document["healed_records"] = [
            {"bucket": r.bucket, "key": r.key, "version_token": r.version_token}
            for r in report.healed_records
        ]
        print_json(document)
        return ExitCode.FAILURE if report.unrecoverable or report.rejected else ExitCode.OK
    print(
        f"scrub: checked {report.checked} of {report.total} copies, {report.corrupt} corrupt,"
        f" {report.healed} healed, {report.unrecoverable} unrecoverable"
    )
    return _rejected(report.rejected, ExitCode.FAILURE if report.unrecoverable else ExitCode.OK)


def _add_inventory_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    inventory = command(
        "inventory",
        cmd_inventory,
        "Export what the ledger changed since the last export.",
        "backup-agent inventory --config /etc/backup-agent/config.yaml",
        "backup-agent inventory --print-table-ddl > inventory.sql",
    )
    inventory.add_argument(
        "--print-table-ddl",
        action="store_true",
        help="print the Athena table over the export instead (docs/audit.md has queries)",
    )


def cmd_inventory(args: argparse.Namespace, config: Config) -> int:
    bucket = config.inventory.bucket
    if args.print_table_ddl:
        print(table_ddl(bucket or "BUCKET", config.inventory.prefix), end="")
        return ExitCode.OK
    report = _locked_job(
        config,
        "inventory",
        lambda ctx: inventory_export(config, ctx).run_once(),
        audited=actions.inventory,
    )
    print(f"inventory: {report.keys} keys changed, {report.rows} rows in {len(report.parts)} parts")
    for part in report.parts:
        print(f"  {printable_key(part)}")
    return ExitCode.OK


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
    if args.json:
        planned = alarms.Alarms(cloudwatch, config, resolve_dimensions(config))
        changes = planned.apply(dry_run=args.dry_run)
        document: dict[str, object] = {
            "dry_run": args.dry_run,
            "alarms": [{"name": c.name, "action": c.action} for c in changes],
        }
        if args.dry_run:
            document["specs"] = planned.specs
        print_json(document)
        return ExitCode.OK
    return alarms.run(config, cloudwatch, resolve_dimensions(config), args.dry_run)


def cmd_dashboard(args: argparse.Namespace, config: Config) -> int:
    if args.dry_run:
        print(json.dumps(planned_body(config, resolve_dimensions(config)), indent=2))
        return ExitCode.OK
    board = Dashboard(build_clients(config).cloudwatch(), config)
    action = board.apply(resolve_dimensions(config), dry_run=args.dry_run)
    if args.json:
        print_json({"dashboard": board.name, "action": action, "dry_run": args.dry_run})
        return ExitCode.OK
    print(f"{action:<16} dashboard {board.name}")
    return ExitCode.OK


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "fleet", False):
        return cmd_fleet_status(args, config)
    sqs = None if args.offline else build_clients(config).sqs
    status = agent_status.gather(config, args.config_path, sqs)
    if args.json:
        print_json(status.report)
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
    journal = Journal(volume.journal_dir)
    clients = build_clients(config)
    table = config.state.table
    report = _auditor(config, clients, volume.root).around(
        "reindex",
        lambda: reindex(
            journal.read_all(),
            clients.dynamodb,
            table,
            workers=args.workers,
        ),
        lambda done, who, at: actions.reindex(done, who, at, table=table),
    )
    if args.json:
        print_json(
            {"table": config.state.table, **dataclasses.asdict(report), "known": report.known}
        )
        return ExitCode.OK
    created = " (table created)" if report.table_created else ""
    print(
        f"{config.state.table}{created}: {report.records} journal records,"
        f" {report.added} added, {report.known} already known"
        + (
            f", {report.index_migrated} moved to their key-index shard"
            if report.index_migrated
            else ""
        )
    )
    return _rejected(journal.rejections.all() + report.rejected, ExitCode.OK)


def cmd_snapshot(args: argparse.Namespace, config: Config) -> int:
    Volume(config.storage.root).read_marker()  # never snapshot an unmounted root
    clients = build_clients(config)
    manager = snapshot_manager(config, clients)
    if args.dry_run:
        run = manager.take(dry_run=True)
    else:
        run = _auditor(config, clients, config.storage.root).around(
            "snapshot", manager.take, actions.snapshot
        )
    if args.json:
        print_json(dataclasses.asdict(run))
    else:
        describe_run(run)
    return ExitCode.OK if run.ok else ExitCode.FAILURE


def _rejected(rejected: list[Rejection], code: int) -> int:
    """Name the records a job read and skipped (bad journal lines, malformed items); with
    any, it fails (1) though it did its work with the rest."""
    if not rejected:
        return code
    print(f"bad records (skipped): {len(rejected)}")
    for bad in rejected:
        print(f"  {printable_key(str(bad))}")
    return code if code != ExitCode.OK else ExitCode.FAILURE


def _print_problems(path: Path, problems: list[str]) -> None:
    print_problems(sys.stderr, f"{path}: invalid configuration", problems)


if __name__ == "__main__":
    sys.exit(main())
