"""`backup-restore COMMAND --config FILE`: list, restore, share and verify backed-up objects.

Kept whole: one command line, its parser and a handler per subcommand, sharing `Runtime`
and the report helpers.

Exit codes (agent/cli/common.py): 0 all good, 1 some items failed (the rest were still
restored), 2 usage or configuration error, 3 backup volume not ready. Records come from
DynamoDB, or with --offline from the volume's own journal (--root MOUNT reads another
copy of the volume, e.g. a mounted snapshot).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from agent import __version__, logs
from agent.aws import build_clients
from agent.cli.common import ExitCode, exit_code_for, guarded, print_problems
from agent.cli.fleet import fleet_holders
from agent.cli.output import human_size, print_snapshots, printable_key
from agent.cli.progress import LogProgress, TtyProgress
from agent.config import (
    Config,
    add_config_option,
    load_config,
    resolve_config_path,
)
from agent.errors import BackupAgentError, ConfigError, VolumeNotReady
from agent.records import OBJECT_ATTRIBUTES, VersionRecord, parse_time
from agent.restore.plan import Plan, RestoreScope, held_here, place, plan, readable
from agent.restore.restorer import NoProgress, Progress, Restorer, Summary
from agent.restore.share import Sharer, staging_bucket
from agent.restore.source import (
    Choice,
    JournalSource,
    LedgerSource,
    RestoreSource,
    Selector,
    newest_stored,
    select,
)
from agent.restore.targets import (
    RESTORED_DIR_MODE,
    RESTORED_FILE_MODE,
    DirectoryTarget,
    S3Target,
    Status,
    Target,
)
from agent.restore.verify import stored_versions, verify
from agent.schedule import duration_seconds
from agent.snapshots.listing import snapshot_listing
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume


class UsageError(Exception):
    """Arguments that parse but do not make sense together."""


# -- wiring --------------------------------------------------------------------------


@dataclass
class Runtime:
    """What every command needs, built lazily from the arguments and the config."""

    args: argparse.Namespace
    config: Config
    out: IO[str]
    err: IO[str]
    _clients: Any = None
    _source: RestoreSource | None = None

    @property
    def clients(self) -> Any:
        if self._clients is None:
            self._clients = build_clients(self.config)
        return self._clients

    def volume(self) -> Volume:
        root = Path(self.args.root) if self.args.root else self.config.storage.root
        volume = Volume(root)
        volume.read_marker()
        return volume

    @property
    def source(self) -> RestoreSource:
        if self._source is None:
            if self.args.offline:
                self._source = JournalSource(Journal(self.volume().journal_dir))
            else:
                self._source = LedgerSource(Ledger(self.clients.dynamodb, self.config.state.table))
        return self._source

    def buckets(self) -> list[str]:
        return [self.args.source_bucket] if self.args.source_bucket else self.config.buckets

    def one_bucket(self) -> str:
        buckets = self.buckets()
        if len(buckets) != 1:
            raise UsageError("several buckets are configured: choose one with --source-bucket")
        return buckets[0]

    def emit(self, data: dict[str, Any]) -> None:
        self.out.write(json.dumps(data, ensure_ascii=False) + "\n")

    def progress(self, kind: str = "restore") -> Progress:
        if self.err.isatty():
            return TtyProgress(self.err)
        return LogProgress(kind)


Handler = Callable[[Runtime], int]


def main(
    argv: Sequence[str] | None = None, *, out: IO[str] | None = None, err: IO[str] | None = None
) -> int:
    return guarded("backup-restore", lambda: _main(argv, out, err), err=err)


def _main(argv: Sequence[str] | None, out: IO[str] | None, err: IO[str] | None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help(err)
        return ExitCode.USAGE
    path = resolve_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        print_problems(err, f"{path}: invalid configuration", exc.problems)
        return ExitCode.USAGE
    logs.configure(config.logging.level, config.logging.format, stream=err)
    runtime = Runtime(args, config, out, err)
    try:
        result: int = args.handler(runtime)
        return result
    except UsageError as exc:
        print(f"backup-restore: {printable_key(exc)}", file=err)
        return ExitCode.USAGE
    except ConfigError as exc:
        print_problems(err, f"{path}: configuration problem", exc.problems)
        return ExitCode.USAGE
    except VolumeNotReady as exc:
        print(f"backup-restore: backup volume not ready: {printable_key(exc)}", file=err)
        return exit_code_for(exc)
    except BackupAgentError as exc:
        hint = "" if args.offline else " (DynamoDB unreachable? --offline reads the volume)"
        print(f"backup-restore: {printable_key(exc)}{hint}", file=err)
        return ExitCode.FAILURE
    except KeyboardInterrupt:
        print(
            "backup-restore: interrupted; files already in place are complete,"
            " the rest were not started or were cleaned up",
            file=err,
        )
        return ExitCode.INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backup-restore", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"backup-restore {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_config_option(sub)
        sub.add_argument(
            "--offline",
            action="store_true",
            help="read records from the volume's journal instead of DynamoDB",
        )
        sub.add_argument(
            "--root", metavar="MOUNT", help="use another copy of the volume (e.g. a snapshot)"
        )
        sub.add_argument(
            "--source-bucket",
            metavar="B",
            help="the backed-up bucket (default: the configured one; all for list/verify)",
        )
        sub.add_argument("--json", action="store_true", help="JSON lines on stdout")
        sub.set_defaults(handler=handler)
        return sub

    listing = command("list", cmd_list, "List backed-up keys and versions.")
    listing.add_argument("--prefix", default="", metavar="P")
    listing.add_argument("--versions", action="store_true", help="every version, not the latest")
    listing.add_argument(
        "--deleted", action="store_true", help="include keys deleted in S3 (default: hide them)"
    )

    restore = command("restore", cmd_restore, "Restore files to a directory or into S3.")
    scope = restore.add_mutually_exclusive_group(required=True)
    scope.add_argument("--key", metavar="K")
    scope.add_argument("--prefix", metavar="P")
    scope.add_argument("--all", action="store_true")
    _add_version_options(restore)
    restore.add_argument(
        "--include-deleted",
        action="store_true",
        help="with --prefix/--all and no --at: also keys deleted in S3 (their newest version)",
    )
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", metavar="DIR", help="write files under DIR")
    target.add_argument("--to-s3", action="store_true", help="put the bytes back into S3")
    restore.add_argument("--bucket", metavar="B", help="--to-s3: target bucket (default: same)")
    restore.add_argument(
        "--to-prefix", metavar="P2", default="", help="--to-s3: prepend P2 to every key"
    )
    restore.add_argument("--overwrite", action="store_true", help="replace what is there")
    restore.add_argument(
        "--mode",
        type=_octal_mode,
        default=RESTORED_FILE_MODE,
        help="--to DIR: the restored files' mode (default 0600)",
    )
    restore.add_argument(
        "--dir-mode",
        type=_octal_mode,
        default=RESTORED_DIR_MODE,
        help="--to DIR: the mode of directories the restore creates (default 0700)",
    )
    restore.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    restore.add_argument("--workers", type=int, help="files at once (default restore.workers)")

    share = command("share", cmd_share, "Stage one file and print a presigned GET URL.")
    share.add_argument("--key", metavar="K", required=True)
    _add_version_options(share)
    share.add_argument(
        "--expires", metavar="DURATION", help="URL lifetime, e.g. 1h (default restore.share_expiry)"
    )

    check = command("verify", cmd_verify, "Check stored copies against their SHA-256.")
    check.add_argument("--prefix", default="", metavar="P")
    check.add_argument(
        "--sample", type=_fraction, default=1.0, metavar="FRACTION", help="e.g. 0.05"
    )
    check.add_argument("--seed", type=int, help="make --sample repeatable")
    check.add_argument("--workers", type=int, help="copies at once (default restore.workers)")

    snaps = command("snapshots", cmd_snapshots, "List the agent's EBS snapshots of the volume.")
    snaps.add_argument("--volume-id", metavar="VOL", help="only this volume's (default: any)")
    return parser


def _add_version_options(sub: argparse.ArgumentParser) -> None:
    which = sub.add_mutually_exclusive_group()
    which.add_argument("--version", metavar="V", help="an S3 version id or a version_token")
    which.add_argument(
        "--at", metavar="TIMESTAMP", type=_timestamp, help="what the bucket held then (ISO-8601)"
    )


def _timestamp(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO-8601 time like 2026-11-23T10:00:00Z"
        ) from None


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1]")
    return value


# -- list ----------------------------------------------------------------------------


def cmd_snapshots(rt: Runtime) -> int:
    """Works when the instance and volume are gone: it reads EC2's tags, not the volume."""

    snapshots = snapshot_listing(rt.config, rt.clients, rt.args.volume_id)
    if rt.args.json:
        for snap in snapshots:
            rt.emit(
                {
                    "snapshot_id": snap.snapshot_id,
                    "volume_id": snap.volume_id,
                    "region": snap.region,
                    "state": snap.state,
                    "taken_at": snap.taken_at.isoformat(),
                    "journal_position": snap.journal_position,
                }
            )
        return ExitCode.OK
    print_snapshots(snapshots, out=rt.out)
    return ExitCode.OK


def cmd_list(rt: Runtime) -> int:
    rows = list(_list_rows(rt))
    if rt.args.json:
        for row in rows:
            rt.emit(row)
        return ExitCode.OK
    table = [["KEY", "VERSION", "SIZE", "EVENT TIME", "BACKED UP", "HOLDER", "DELETED"]]
    for row in rows:
        table.append(
            [
                row["key"],
                str(row["version_id"] or row["version_token"]),
                "-" if row["size"] is None else human_size(row["size"]),
                row["event_time"][:19],
                row["backup_time"][:19],
                row["volume_id"],
                _state_cell(row),
            ]
        )
    table = [[printable_key(cell) for cell in line] for line in table]  # a journal may lie
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        rt.out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        rt.out.write("\n")
    rt.out.write(f"{len(rows)} {'versions' if rt.args.versions else 'keys'}\n")
    return ExitCode.OK


def _list_rows(rt: Runtime) -> Iterator[dict[str, Any]]:
    for bucket in rt.buckets():
        for latest in rt.source.latest(bucket, rt.args.prefix):
            if latest.deleted and not rt.args.deleted:
                continue
            if rt.args.versions:
                for record in rt.source.history(bucket, latest.key):
                    yield _row(record, record.deleted)
            elif latest.deleted:
                stored = newest_stored(rt.source.history(bucket, latest.key))
                row = _row(stored or latest, True)
                row["deleted_at"] = latest.event_time
                yield row
            else:  # an archived version backed up later shows as the backed-up record
                yield _row(
                    readable(rt.source, bucket, Choice(latest.key, latest)).record or latest, False
                )


def _state_cell(row: dict[str, Any]) -> str:
    if row["deleted"]:
        return "deleted"
    if row["state"] in ("archived", "sse-c"):  # not backed up: S3 would not serve it
        return f"{row['state']} {row['storage_class'] or ''}".rstrip()
    return ""


def _state(record: VersionRecord) -> str:
    """stored (a copy on the volume), deleted (a tombstone), archived or sse-c (S3 holds the
    version but would not serve it to the agent: nothing stored)."""
    if record.unreadable:
        return record.unreadable
    return "deleted" if record.deleted else "stored"


def _row(record: VersionRecord, deleted: bool) -> dict[str, Any]:
    return {
        "bucket": record.bucket,
        "key": record.key,
        "version_id": record.version_id,
        "version_token": record.version_token,
        "size": record.size,
        "stored_size": record.stored_size,
        "sha256": record.sha256,
        "event_time": record.event_time,
        "backup_time": record.backup_time,
        "volume_id": record.volume_id,  # the volume that holds the copy (fleet: one of many)
        "deleted": deleted,
        "state": _state(record),
        "storage_class": record.storage_class,
        # what restore --to-s3 puts back besides the bytes; null: not recorded
        **{name: getattr(record, name) for name in OBJECT_ATTRIBUTES},
    }


# -- restore -------------------------------------------------------------------------


def cmd_restore(rt: Runtime) -> int:
    args = rt.args
    if args.version and not args.key:
        raise UsageError("--version needs --key (versions belong to one key)")
    if not args.to_s3 and (args.bucket or args.to_prefix):
        raise UsageError("--bucket and --to-prefix go with --to-s3")
    bucket = rt.one_bucket()
    scope = RestoreScope(key=args.key) if args.key else RestoreScope(prefix=args.prefix or "")
    # A key asked for by name is restored even when deleted in S3: that is the usual rescue.
    include_deleted = args.include_deleted or args.key is not None
    selector = Selector(version=args.version, at=args.at, include_deleted=include_deleted)
    volume = rt.volume()
    chosen = plan(rt.source, bucket, scope, selector)
    chosen = held_here(chosen, volume.read_marker().volume_id, volume.has_copy)
    target: Target
    if args.to_s3:
        target = S3Target(
            rt.clients.s3,
            volume,
            bucket=args.bucket,
            prefix=args.to_prefix,
            overwrite=args.overwrite,
            expected_bucket_owner=_target_owner(rt.config, args.bucket or bucket),
        )
    else:
        chosen = place(chosen)
        target = DirectoryTarget(
            volume,
            Path(args.to),
            overwrite=args.overwrite,
            file_mode=args.mode,
            dir_mode=args.dir_mode,
        )
    workers = args.workers or rt.config.restore.workers
    progress = NoProgress() if args.dry_run else rt.progress()
    stop = threading.Event()
    restorer = Restorer(target, workers=max(1, workers), progress=progress, stop=stop)
    with first_interrupt_sets(stop, rt.err):
        summary = restorer.run(chosen, dry_run=args.dry_run)
    _report_restore(rt, summary)
    if not chosen.items and not chosen.missing and not chosen.elsewhere:
        print("backup-restore: nothing to restore", file=rt.err)
        return ExitCode.FAILURE
    return ExitCode.OK if summary.ok else ExitCode.FAILURE


def _target_owner(config: Config, target_bucket: str) -> str | None:
    """`aws.expected_bucket_owner` is the backed-up buckets' owner: sent when the restore goes
    back into one of them, never to another bucket (a recovery bucket may be in another
    account; S3 answers 403 when the owner differs, bucket-owner-condition.html)."""
    return config.aws.expected_bucket_owner if target_bucket in config.buckets else None


def _report_restore(rt: Runtime, summary: Summary) -> None:
    if rt.args.json:
        for result in summary.results:
            rt.emit(result.to_dict())
        rt.emit(summary.to_dict())
        return
    out = rt.out
    if rt.args.dry_run:
        out.write("dry run: nothing written\n")
        for result in summary.results:
            note = f"  [{printable_key(result.note)}]" if result.note else ""
            destination = printable_key(result.destination)
            out.write(f"  {printable_key(result.item.key)} → {destination}{note}\n")
    _section(out, "renamed keys (unsafe or colliding as paths)", _renamed_lines(summary.plan))
    _section(
        out,
        "failed",
        [f"{printable_key(r.item.key)}: {r.error}" for r in summary.failed],
    )
    _section(out, "held by another volume (restore there)", _elsewhere_lines(rt, summary.plan))
    _section(
        out,
        "not restored",
        [
            f"{printable_key(c.key)}: {c.reason}"
            for c in summary.plan.missing + summary.plan.skipped
        ],
    )
    dry = rt.args.dry_run
    out.write(
        f"{'planned' if dry else 'restored'}"
        f" {summary.count(Status.PLANNED if dry else Status.RESTORED)} files"
        f" ({human_size(summary.plan.total_bytes if dry else summary.bytes)}),"
        f" unchanged {summary.count(Status.UNCHANGED)},"
        f" failed {len(summary.failed) + len(summary.plan.missing)},"
        f" skipped {len(summary.plan.skipped)}"
        + (f", held elsewhere {len(summary.plan.elsewhere)}" if summary.plan.elsewhere else "")
        + "\n"
    )


def _elsewhere_lines(rt: Runtime, restore_plan: Plan) -> list[str]:
    """Each version another volume holds, with its member when the fleet register says."""
    if not restore_plan.elsewhere:
        return []
    members = {} if rt.args.offline else fleet_holders(rt.config, rt.clients.dynamodb)
    lines = []
    for item in restore_plan.elsewhere:
        record = item.record
        member = members.get(record.volume_id)
        where = f"volume {record.volume_id}"
        if member is not None:
            where += f" on {member.member_id}"
            if member.availability_zone:
                where += f" ({member.availability_zone})"
        version = record.version_id or record.version_token
        lines.append(f"{printable_key(item.key)}: version {version}: {where}")
    return lines


def _renamed_lines(restore_plan: Plan) -> list[str]:
    lines = []
    for item in restore_plan.renamed:
        assert item.placement is not None
        why = "collision" if item.placement.collided else "escaped"
        lines.append(
            f"{printable_key(item.key)} → {printable_key(item.placement.relative)}  ({why})"
        )
    return lines


def _section(out: IO[str], title: str, lines: list[str]) -> None:
    if lines:
        out.write(f"{title}:\n")
        for line in lines:
            out.write(f"  {printable_key(line)}\n")  # errors and reasons quote keys and paths


@contextlib.contextmanager
def first_interrupt_sets(stop: threading.Event, err: IO[str]) -> Iterator[None]:
    """Ctrl-C once: finish the files in progress, skip the rest, print the summary.

    Ctrl-C twice: stop at once (files in progress still remove their temp files).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print(
            "\nbackup-restore: stopping after the files in progress (Ctrl-C again to abort)",
            file=err,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- share ---------------------------------------------------------------------------


def cmd_share(rt: Runtime) -> int:

    args = rt.args
    staging = staging_bucket(rt.config.restore, rt.config.buckets)
    try:
        seconds = duration_seconds(args.expires) if args.expires else None
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    bucket = rt.one_bucket()
    choice = readable(
        rt.source,
        bucket,
        select(
            args.key,
            rt.source.history(bucket, args.key),
            Selector(version=args.version, at=args.at, include_deleted=True),
        ),
    )
    if choice.record is None:
        print(f"backup-restore: {printable_key(f'{args.key}: {choice.reason}')}", file=rt.err)
        return ExitCode.FAILURE
    sharer = Sharer(
        rt.clients.s3,
        rt.volume(),
        rt.config.restore,
        staging,
        presigner=rt.clients.s3_presigner(),
        credentials_expiry=rt.clients.credentials_expiry,
    )
    shared = sharer.share(choice.record, seconds)
    if shared.cut_short:
        print(f"backup-restore: warning: {shared.cut_short}", file=rt.err)
    if args.json:
        rt.emit(shared.to_dict())
    else:
        rt.out.write(f"{shared.url}\n")
        print(
            f"shared {printable_key(args.key)} ({human_size(choice.record.size or 0)})"
            f" until {shared.expires_at.isoformat(timespec='seconds')}",
            file=rt.err,
        )
    return ExitCode.OK


# -- verify --------------------------------------------------------------------------


def cmd_verify(rt: Runtime) -> int:
    args = rt.args
    records = stored_versions(rt.source, rt.buckets(), args.prefix)
    report = verify(
        rt.volume(),
        records,
        sample=args.sample,
        rng=random.Random(args.seed),  # noqa: S311 - sampling, not cryptography
        workers=max(1, args.workers or rt.config.restore.workers),
        progress=rt.progress("verify"),
    )
    if args.json:
        for problem in report.problems:
            rt.emit(problem.to_dict())
        rt.emit(report.to_dict())
    else:
        _section(
            rt.out,
            "problems",
            [
                f"s3://{p.record.bucket}/{printable_key(p.record.key)}"
                f" (version {p.record.version_id or p.record.version_token}): {p.error}"
                for p in report.problems
            ],
        )
        rt.out.write(
            f"verified {report.checked} of {report.copies} stored copies"
            f" ({report.versions} versions, {human_size(report.bytes)}):"
            f" {len(report.problems)} problems\n"
        )
    return ExitCode.OK if report.ok else ExitCode.FAILURE


# -- formatting ----------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())


def _octal_mode(text: str) -> int:
    """``0640`` or ``640``: permission bits only (no setuid, setgid or sticky)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0640") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: permission bits only (0000-0777)")
    return mode
