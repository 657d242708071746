"""`backup-restore COMMAND --config FILE`: list, restore, share and verify backed-up objects.

Kept whole: one command line, its parser and a handler per subcommand, sharing `Runtime`
and the report helpers.

Exit codes (agent/cli/common.py): 0 all good, 1 some items failed (the rest were still
restored) or some records could not be read (skipped and named), 2 usage or configuration
error, 3 backup volume not ready. Records come from DynamoDB, or with --offline from the
volume's own journal (--root MOUNT reads another copy of the volume, e.g. a mounted
snapshot).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import random
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

from agent import __version__, json_text, logs
from agent.audit import actions
from agent.audit.auditor import Auditor
from agent.audit.cloudwatch import read_from_logs
from agent.audit.identity import whoami
from agent.audit.records import Actor, AuditRecord
from agent.audit.trail import AuditTrail
from agent.aws import build_clients
from agent.cli.common import (
    ExitCode,
    HelpFormatter,
    add_command,
    add_global_options,
    add_workers_option,
    anywhere,
    examples,
    exit_code_for,
    guarded,
    log_level,
    print_problems,
    s3_key,
)
from agent.cli.fleet import fleet_holders
from agent.cli.output import human_size, print_snapshots, printable_key
from agent.cli.progress import LogProgress, TtyProgress
from agent.cli.state_dir import open_state_dir, state_dir
from agent.config import (
    Config,
    load_config,
    replica_group,
    replica_groups,
    resolve_config_path,
)
from agent.errors import BackupAgentError, ConfigError, VolumeNotReady
from agent.fleet.member import STOPPED
from agent.records import OBJECT_ATTRIBUTES, Rejection, VersionRecord, parse_time
from agent.restore.find import Filter, FilterError, Row, Scan, narrowed, rows
from agent.restore.job import (
    ClaimingTarget,
    JobMismatch,
    JobSummary,
    RestoreJob,
    RunRefused,
    check_job_id,
    new_job_id,
    one_run,
    summarise,
)
from agent.restore.plan import Plan, RestoreScope, held_here, place, plan, readable
from agent.restore.restorer import NoProgress, Progress, Restorer, Summary
from agent.restore.share import Shared, Sharer, staging_bucket
from agent.restore.source import (
    JournalSource,
    LedgerSource,
    RestoreSource,
    Selector,
    select,
)
from agent.restore.targets import (
    RESTORED_DIR_MODE,
    RESTORED_FILE_MODE,
    DirectoryTarget,
    Leftovers,
    S3Target,
    Status,
    Target,
)
from agent.restore.verify import Held, VerifyReport, stored_versions, verify
from agent.runtime.wiring import audit_trail, fleet_identity
from agent.schedule import duration_seconds, parse_duration
from agent.snapshots.listing import recorded_snapshots, snapshot_listing
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume


class RestoreAborted(KeyboardInterrupt):
    """A directory restore stopped by a second Ctrl-C, with its temp files looked for after
    the cleanup (`Leftovers`): the files still there and the directories that could not be
    looked in, so the message says what is true (the cleanup itself can be interrupted, by
    a third Ctrl-C)."""

    def __init__(self, left: Leftovers, directory: str) -> None:
        super().__init__()
        self.left = left
        self.directory = directory

    def message(self) -> str:
        head = "interrupted; files already in place are complete"
        files, unchecked = self.left.files, self.left.unchecked
        if not files and not unchecked:
            return f"{head}, the rest were not started or were cleaned up"
        parts = [head]
        if files:
            shown = ", ".join(printable_key(path) for path in files[:3])
            more = f" and {len(files) - 3} more" if len(files) > 3 else ""
            parts.append(f"{len(files)} temp files were left: {shown}{more}")
        if unchecked:
            shown = ", ".join(printable_key(path) for path in unchecked[:3])
            more = f" and {len(unchecked) - 3} more" if len(unchecked) > 3 else ""
            parts.append(
                f"{len(unchecked)} directories could not be checked for temp files: {shown}{more}"
            )
        parts.append(
            f"a restore into {printable_key(self.directory)} an hour from now or later removes"
            " them from the directories it writes to (no restore uses them: they may also be"
            " deleted by hand)"
        )
        return "; ".join(parts)


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

    def rejected(self) -> list[Rejection]:
        """The records the source read and skipped so far (none when it was not opened)."""
        return self._source.rejections.all() if self._source is not None else []

    def buckets(self) -> list[str]:
        bucket = self.args.source_bucket
        if bucket is None:
            return self.config.buckets
        if bucket not in self.config.buckets:
            raise UsageError(
                f"--source-bucket {bucket}: not a configured bucket"
                f" (the config's buckets: {', '.join(self.config.buckets)})"
            )
        return [bucket]

    def one_bucket(self) -> str:
        buckets = self.buckets()
        if len(buckets) != 1:
            raise UsageError("several buckets are configured: choose one with --source-bucket")
        return buckets[0]

    def emit(self, data: dict[str, Any]) -> None:
        self.out.write(json_text.dumps(data) + "\n")

    def progress(self, kind: str = "restore") -> Progress:
        if getattr(self.args, "quiet", False):
            return NoProgress()
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
    logs.configure(log_level(args, config.logging.level), config.logging.format, stream=err)
    runtime = Runtime(args, config, out, err)
    try:
        result: int = args.handler(runtime)
        return _report_rejected(runtime, result)
    except UsageError as exc:
        print(f"backup-restore: {printable_key(exc)}", file=err)
        return ExitCode.USAGE
    except ConfigError as exc:
        print_problems(err, f"{path}: configuration problem", exc.problems)
        return ExitCode.USAGE
    except VolumeNotReady as exc:
        print(f"backup-restore: backup volume not ready: {printable_key(exc)}", file=err)
        return exit_code_for(exc)
    except RunRefused as exc:  # another run of the fleet job here: not a DynamoDB problem
        print(f"backup-restore: {printable_key(exc)}", file=err)
        return ExitCode.FAILURE
    except BackupAgentError as exc:
        hint = "" if args.offline else " (DynamoDB unreachable? --offline reads the volume)"
        print(f"backup-restore: {printable_key(exc)}{hint}", file=err)
        return ExitCode.FAILURE
    except RestoreAborted as exc:
        print(f"backup-restore: {exc.message()}", file=err)
        return ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        print(
            "backup-restore: interrupted; files already in place are complete; a temp file"
            " (.restore-*.part) a restore leaves is removed by a restore into its directory"
            " an hour later or more",
            file=err,
        )
        return ExitCode.INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backup-restore",
        description=__doc__.splitlines()[0],
        formatter_class=HelpFormatter,
        epilog=examples(
            "backup-restore list --prefix reports/",
            "backup-restore restore --key reports/q3.pdf --to /tmp/restore",
            "backup-restore --offline --root /mnt/snapshot-snap-0123 list --json",
        ),
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"backup-restore {__version__}",
        help="print the version and exit (after a command: which S3 version to restore)",
    )
    add_global_options(parser, top=True)
    _add_source_options(parser, top=True)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        name: str, handler: Handler, help_text: str, *example_lines: str
    ) -> argparse.ArgumentParser:
        sub = add_command(commands, name, handler, help_text, *example_lines)
        _add_source_options(sub, top=False)
        return sub

    listing = command(
        "list",
        cmd_list,
        "List backed-up keys and versions.",
        "backup-restore list --prefix reports/ --versions",
        "backup-restore list --deleted --json",
    )
    listing.add_argument(
        "--prefix", default="", metavar="P", help="only keys starting with P (default: all)"
    )
    listing.add_argument("--versions", action="store_true", help="every version, not the latest")
    listing.add_argument(
        "--deleted", action="store_true", help="include keys deleted in S3 (default: hide them)"
    )
    add_filter_options(listing)
    add_find_parser(command)

    restore = command(
        "restore",
        cmd_restore,
        "Restore files to a directory or into S3.",
        "backup-restore restore --key reports/q3.pdf --to /tmp/restore",
        "backup-restore restore --prefix reports/ --at 2026-11-23T10:00:00Z --to /tmp/restore",
        "backup-restore restore --all --to-s3 --bucket recovery-bucket --dry-run",
        "backup-restore restore --prefix reports/ --to-s3 --fleet --job reports-back",
        "backup-restore restore --prefix reports/ --to-s3 --fleet --job reports-back --status",
    )
    scope = restore.add_mutually_exclusive_group(required=True)
    scope.add_argument("--key", metavar="K", type=s3_key, help="restore this one key")
    scope.add_argument("--prefix", metavar="P", help="restore every key starting with P")
    scope.add_argument("--all", action="store_true", help="restore every key of the bucket")
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
    add_workers_option(restore, "files at once (default restore.workers)")
    fleet = restore.add_argument_group("a fleet (docs/fleet.md): run on every member")
    fleet.add_argument(
        "--fleet",
        action="store_true",
        help="--to-s3: one job for the fleet; this member restores the keys its volume holds,"
        " each key claimed in the table so that it is put once fleet-wide",
    )
    fleet.add_argument(
        "--job",
        metavar="ID",
        help="--fleet: the job to join (default: start a new one and print its id)",
    )
    fleet.add_argument(
        "--status",
        action="store_true",
        help="--fleet --job ID: print the job's summary, restore nothing",
    )
    add_filter_options(restore)

    share = command(
        "share",
        cmd_share,
        "Stage one file and print a presigned GET URL.",
        "backup-restore share --key reports/q3.pdf --expires 1h",
    )
    share.add_argument("--key", metavar="K", type=s3_key, required=True, help="the key to share")
    _add_version_options(share)
    share.add_argument(
        "--expires", metavar="DURATION", help="URL lifetime, e.g. 1h (default restore.share_expiry)"
    )
    add_filter_options(share)

    check = command(
        "verify",
        cmd_verify,
        "Check stored copies against their SHA-256.",
        "backup-restore verify --sample 0.05 --seed 7",
        "backup-restore verify --prefix reports/ --json",
    )
    check.add_argument(
        "--prefix", default="", metavar="P", help="only keys starting with P (default: all)"
    )
    check.add_argument(
        "--sample",
        type=_fraction,
        default=1.0,
        metavar="FRACTION",
        help="check this share of the copies, e.g. 0.05 (default 1: all)",
    )
    check.add_argument("--seed", type=int, help="make --sample repeatable")
    add_workers_option(check, "copies at once (default restore.workers)")

    snaps = command(
        "snapshots",
        cmd_snapshots,
        "List the agent's EBS snapshots of the volume (EC2's tags; --offline: the volume's"
        " record).",
        "backup-restore snapshots --volume-id vol-0123456789abcdef0",
        "backup-restore snapshots --offline --root /mnt/snapshot-snap-0123 --json",
    )
    snaps.add_argument("--volume-id", metavar="VOL", help="only this volume's (default: any)")
    _add_audit_parser(command)
    return parser


def add_find_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    """`find`: `list` with a keyword first, paged, streaming with --json."""
    find = command(
        "find",
        cmd_find,
        "Find backed-up keys by keyword, tag, type, time, size.",
        "backup-restore find invoice --content-type application/pdf --since 2026-11-01",
        "backup-restore find 'reports/*.csv' --tag team=finance --versions --json",
        "backup-restore find --min-size 1GiB --limit 100",
    )
    find.add_argument(
        "pattern",
        nargs="?",
        metavar="PATTERN",
        help="a case-insensitive part of the key, or a glob (*, ?, [) on the whole key",
    )
    find.add_argument("--prefix", default="", metavar="P", help="only keys under P")
    find.add_argument("--versions", action="store_true", help="every version, not the latest")
    find.add_argument(
        "--deleted", action="store_true", help="include keys deleted in S3 (default: hide them)"
    )
    add_filter_options(find, keyword=False)
    find.add_argument(
        "--limit",
        type=_count,
        metavar="N",
        help="at most N rows (a page); the last line says how to go on",
    )
    find.add_argument(
        "--after",
        metavar="BUCKET/KEY",
        help="start after this bucket/key (the page before's last row)",
    )


def add_filter_options(sub: argparse.ArgumentParser, *, keyword: bool = True) -> None:
    """The filters `find`, `list`, `restore` and `share` share (agent/restore/find.py)."""
    group = sub.add_argument_group("filters (all must match)")
    if keyword:
        group.add_argument(
            "--match",
            dest="pattern",
            metavar="PATTERN",
            help="a case-insensitive part of the key, or a glob (*, ?, [) on the whole key",
        )
    group.add_argument(
        "--regex", metavar="RE", help="a Python regular expression searched in the key"
    )
    group.add_argument(
        "--tag",
        action="append",
        metavar="K=V",
        help="the version was tagged K=V when backed up (repeat: all of them)",
    )
    group.add_argument("--content-type", metavar="TYPE", help="a prefix, e.g. image/ or text/csv")
    group.add_argument(
        "--since", type=_timestamp, metavar="TIME", help="event time at or after (ISO-8601)"
    )
    group.add_argument("--until", type=_timestamp, metavar="TIME", help="event time before")
    group.add_argument("--min-size", type=_byte_size, metavar="SIZE", help="e.g. 10MB, 1GiB")
    group.add_argument("--max-size", type=_byte_size, metavar="SIZE", help="e.g. 512k")
    group.add_argument(
        "--category", metavar="NAME", help="recorded in that category (categories: in config)"
    )


def _filter_of(args: argparse.Namespace) -> Filter:
    try:
        return Filter.build(
            keyword=args.pattern,
            regex=args.regex,
            tags=args.tag,
            content_type=args.content_type,
            since=args.since,
            until=args.until,
            min_size=args.min_size,
            max_size=args.max_size,
            category=args.category,
        )
    except FilterError as exc:
        raise UsageError(str(exc)) from None


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", re.IGNORECASE)


def _byte_size(text: str) -> int:
    """``1048576``, ``512k``, ``10MB`` (10^6), ``1GiB`` (2^30)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 512k, 10MB or 1GiB")
    number, unit, binary = match.groups()
    power = "kmgt".find(unit.lower()) + 1 if unit else 0
    return int(float(number) * (1024 if binary or not unit else 1000) ** power)


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _add_source_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """Where records and copies come from: accepted before the command name and after it."""
    parser.add_argument(
        "--offline",
        action="store_true",
        default=anywhere(top, False),
        help="read records from the volume's journal instead of DynamoDB"
        " (snapshots: the volume's own record instead of EC2)",
    )
    parser.add_argument(
        "--root",
        metavar="MOUNT",
        default=anywhere(top),
        help="use another copy of the volume (e.g. a snapshot)",
    )
    parser.add_argument(
        "--source-bucket",
        metavar="B",
        default=anywhere(top),
        help="the backed-up bucket (default: the configured one; all for list/verify)",
    )


def _add_version_options(sub: argparse.ArgumentParser) -> None:
    which = sub.add_mutually_exclusive_group()
    which.add_argument(
        "--version", metavar="V", help="this version: an S3 version id or a version_token"
    )
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
    """Works when the instance and volume are gone: it reads EC2's tags, not the volume.
    --offline reads the volume's own record and makes no AWS call."""

    if rt.args.offline:
        snapshots = recorded_snapshots(rt.volume().root, rt.args.volume_id)
    else:
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
    args = rt.args
    buckets = rt.buckets()  # an unknown --source-bucket is refused before any AWS client
    found = rows(
        rt.source,
        buckets,
        prefix=args.prefix,
        only=_filter_of(args),
        versions=args.versions,
        deleted=args.deleted,
    )
    table_rows = [_row(_with_holders(rt, row)) for row in found]
    if args.json:
        for row in table_rows:
            rt.emit(row)
        return ExitCode.OK
    _print_table(rt.out, table_rows)
    rt.out.write(f"{len(table_rows)} {'versions' if args.versions else 'keys'}\n")
    return ExitCode.OK


def cmd_find(rt: Runtime) -> int:
    """`list` with filters, in pages: --json streams each row as it is found; a person gets
    the table of the page, a progress line on a TTY, and how to ask for the next page."""
    args = rt.args
    only = _filter_of(args)
    after = _after(args.after) if args.after else None
    scan = Scan(tick=_find_progress(rt.err) if rt.err.isatty() and not args.json else None)
    buckets = rt.buckets()  # an unknown --source-bucket is refused before any AWS client
    found = rows(
        rt.source,
        buckets,
        prefix=args.prefix,
        only=only,
        versions=args.versions,
        deleted=args.deleted,
        after=after,
        scan=scan,
    )
    page: list[dict[str, Any]] = []
    last: Row | None = None
    more = False
    for row in found:
        if args.limit is not None and len(page) >= args.limit and not _same_key(row, last):
            more = True  # a key's versions are never split over two pages
            break
        last = row
        data = _row(_with_holders(rt, row))
        page.append({} if args.json else data)
        if args.json:
            rt.emit(data)
    if scan.tick is not None:
        rt.err.write("\r\033[K")
    if not args.json:
        _print_table(rt.out, page)
        noun = "versions" if args.versions else "keys"
        rt.out.write(f"{len(page)} {noun} found ({scan.keys} keys read)\n")
    if more and last is not None:
        resume = printable_key(f"{last.record.bucket}/{last.record.key}")
        print(f"backup-restore: more: --after {shlex.quote(resume)}", file=rt.err)
    return ExitCode.OK


def _same_key(row: Row, last: Row | None) -> bool:
    return last is not None and (row.record.bucket, row.record.key) == (
        last.record.bucket,
        last.record.key,
    )


def _after(text: str) -> tuple[str, str]:
    bucket, sep, key = text.partition("/")
    if not sep or not bucket:
        raise UsageError(f"--after {text!r}: expected BUCKET/KEY (the last row of a page)")
    return bucket, key


def _find_progress(err: IO[str]) -> Callable[[Scan], None]:
    def tick(scan: Scan) -> None:
        err.write(f"\r\033[Kread {scan.keys} keys, {scan.matches} found")
        err.flush()

    return tick


def _print_table(out: IO[str], rows_: list[dict[str, Any]]) -> None:
    categorised = any(row["category"] for row in rows_)  # the column when categories are used
    table = [["KEY", "VERSION", "SIZE", "EVENT TIME", "BACKED UP", "HOLDER", "DELETED"]]
    if categorised:
        table[0].insert(2, "CATEGORY")
    for row in rows_:
        line = [
            row["key"],
            str(row["version_id"] or row["version_token"]),
            "-" if row["size"] is None else human_size(row["size"]),
            row["event_time"][:19],
            row["backup_time"][:19],
            ", ".join(row["holders"]) or "-",  # the volumes holding the copy (replicas: R)
            _state_cell(row),
        ]
        if categorised:
            line.insert(2, row["category"] or "-")
        table.append(line)
    table = [[printable_key(cell) for cell in line] for line in table]  # a journal may lie
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        out.write("\n")


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


def _with_holders(rt: Runtime, row: Row) -> Row:
    """With `fleet.replicas` > 1, the row's holders as the version item names them now: a
    key's newest row comes from its LATEST item, a copy made when the version was first
    recorded, before the other groups added their holders. One GetItem per such row."""
    reader = _holders_reader(rt)
    if rt.args.versions or reader is None or not row.record.sha256:
        return row  # a version item already (history), or no replicas, or no copy
    return dataclasses.replace(row, record=reader(row.record))


def _holders_reader(rt: Runtime) -> Callable[[VersionRecord], VersionRecord] | None:
    """A record with the holders its version item names now (one GetItem), or None without
    replicas or when the journal is the source (it names this volume only)."""
    source = rt.source
    if replica_group(rt.config) is None or not isinstance(source, LedgerSource):
        return None

    def current(record: VersionRecord) -> VersionRecord:
        read = source.ledger.get_version(record.bucket, record.key, record.version_token)
        if read is None or read.holders is None:
            return record
        return dataclasses.replace(record, holders=read.holders)

    return current


def _row(found: Row) -> dict[str, Any]:
    record, deleted = found.record, found.deleted
    row = {
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
        "holders": record.holder_volumes(),  # with replicas, every group's: volume_id first
        "deleted": deleted,
        "state": _state(record),
        "storage_class": record.storage_class,
        "category": record.category,
        # what restore --to-s3 puts back besides the bytes; null: not recorded
        **{name: getattr(record, name) for name in OBJECT_ATTRIBUTES},
    }
    if found.deleted_at is not None:
        row["deleted_at"] = found.deleted_at
    return row


# -- restore -------------------------------------------------------------------------


def cmd_restore(rt: Runtime) -> int:
    args = rt.args
    if args.version and not args.key:
        raise UsageError("--version needs --key (versions belong to one key)")
    if not args.to_s3 and (args.bucket or args.to_prefix):
        raise UsageError("--bucket and --to-prefix go with --to-s3")
    if (args.job or args.status) and not args.fleet:
        raise UsageError("--job and --status go with --fleet")
    if args.to is not None:
        _check_writable(Path(args.to))
    bucket = rt.one_bucket()
    scope = RestoreScope(key=args.key) if args.key else RestoreScope(prefix=args.prefix or "")
    # A key asked for by name is restored even when deleted in S3: that is the usual rescue.
    include_deleted = args.include_deleted or args.key is not None
    selector = Selector(version=args.version, at=args.at, include_deleted=include_deleted)
    with contextlib.ExitStack() as held:  # a fleet run's lock on its job, to the run's end
        job = _fleet_job(rt, bucket, held) if args.fleet else None
        return _restore(rt, bucket, scope, selector, job)


def _restore(
    rt: Runtime, bucket: str, scope: RestoreScope, selector: Selector, job: RestoreJob | None
) -> int:
    args = rt.args
    volume = rt.volume()
    chosen = narrowed(plan(rt.source, bucket, scope, selector), _filter_of(args))
    chosen = held_here(chosen, volume.read_marker().volume_id, volume.has_copy, _holders_reader(rt))
    if job is not None and args.status:
        return _report_job(rt, job, chosen)
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
        if job is not None:
            target = ClaimingTarget(target, job)
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
    where = f"s3://{args.bucket or bucket}/{args.to_prefix}" if args.to_s3 else args.to
    where = where if args.to_s3 else str(Path(where).resolve())

    def run() -> Summary:
        with first_interrupt_sets(stop, rt.err):
            try:
                return restorer.run(chosen, dry_run=args.dry_run)
            except KeyboardInterrupt:
                if not isinstance(target, DirectoryTarget) or args.dry_run:
                    raise
                raise RestoreAborted(target.left_behind(chosen.items), where) from None

    if args.dry_run:
        summary = run()
    else:  # a restore that raises (Ctrl-C twice, a full disk) is recorded as failed
        summary = _auditor(rt).around(
            "restore-s3" if args.to_s3 else "restore",
            run,
            lambda done, who, at: actions.restore(
                done,
                who,
                at,
                to_s3=args.to_s3,
                target=where,
                prefix=None if args.key else (args.prefix or ""),
            ),
        )
    if job is not None:
        job.record_run(_run_counts(summary))
        return _report_job(rt, job, chosen, summary)
    _report_restore(rt, summary)
    if not chosen.items and not chosen.missing and not chosen.elsewhere:
        print("backup-restore: nothing to restore", file=rt.err)
        return ExitCode.FAILURE
    return ExitCode.OK if summary.ok else ExitCode.FAILURE


# -- restore --fleet: one job, every member its share (agent/restore/job.py) -----------------


def _fleet_job(rt: Runtime, bucket: str, held: contextlib.ExitStack) -> RestoreJob:
    """This member's view of the job: started here, or joined with the same arguments. A
    run (not --status) first takes this member's lock on the job, kept in `held`."""
    args = rt.args
    if not args.to_s3:
        raise UsageError("--fleet goes with --to-s3 (each member puts its share back into S3)")
    if args.dry_run:
        raise UsageError("--fleet claims keys: leave it out to see this member's share (--dry-run)")
    if args.offline:
        raise UsageError("--fleet reads the table (the fleet's records and claims): not --offline")
    if args.status and not args.job:
        raise UsageError("--status needs --job ID (the job to report on)")
    if args.job and (problem := check_job_id(args.job)):
        raise UsageError(f"--job {problem}")
    own_id = rt.volume().read_marker().volume_id
    job = RestoreJob(
        rt.clients.dynamodb,
        rt.config.state.table,
        args.job or new_job_id(datetime.now(UTC)),
        member_id=fleet_identity(own_id).member_id,
        volume_id=own_id,
        clock=lambda: datetime.now(UTC),
    )
    if not args.status:  # before anything is written to the table
        held.enter_context(_one_run_here(job))
    try:
        started = job.open(_job_arguments(args, bucket), create=not args.status)
    except JobMismatch as exc:
        raise UsageError(str(exc)) from None
    if started and not args.job:
        print(
            f"backup-restore: started restore job {job.job_id}: run the same command with"
            f" --job {job.job_id} on every other member",
            file=rt.err,
        )
    return job


@contextlib.contextmanager
def _one_run_here(job: RestoreJob) -> Iterator[None]:
    """This member's lock on the job, for the whole run (agent/restore/job.py `one_run`):
    its own claims would let a second run of it put every key again. The lock lives in the
    operator's state directory (agent/cli/state_dir.py); RunRefused when it cannot be had."""
    directory, private = state_dir()
    try:
        dir_fd = open_state_dir(directory, private=private)
    except OSError as exc:
        raise RunRefused(
            f"restore job {job.job_id}: cannot keep its lock in {directory}"
            f" ({exc.strerror or exc}); nothing was restored: set XDG_STATE_HOME to a"
            " directory of yours"
        ) from None
    try:
        with one_run(dir_fd, directory, job.job_id, job.member_id):
            yield
    finally:
        os.close(dir_fd)


def _job_arguments(args: argparse.Namespace, bucket: str) -> dict[str, Any]:
    """What every member must select alike: the scope, the version, the filters, the
    target. Not --workers, --quiet and the like."""
    names = (
        "key",
        "prefix",
        "all",
        "version",
        "at",
        "include_deleted",
        "bucket",
        "to_prefix",
        "overwrite",
        "pattern",
        "regex",
        "tag",
        "content_type",
        "since",
        "until",
        "min_size",
        "max_size",
        "category",
    )
    found = {name: getattr(args, name, None) for name in names}
    found["source_bucket"] = bucket
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in found.items()}


def _run_counts(summary: Summary) -> dict[str, int]:
    return {
        "restored": summary.count(Status.RESTORED),
        "unchanged": summary.count(Status.UNCHANGED),
        "taken": summary.count(Status.TAKEN),
        "failed": len(summary.failed),
        "held_elsewhere": len(summary.plan.elsewhere),
    }


def _report_job(rt: Runtime, job: RestoreJob, chosen: Plan, own: Summary | None = None) -> int:
    """The job's one summary (any member prints it); 0 only when every key is done."""
    members = fleet_holders(rt.config, rt.clients.dynamodb)
    now = datetime.now(UTC)
    live = {v: m.member_id for v, m in members.items() if m.state != STOPPED and not m.missing(now)}
    live[job.volume_id] = job.member_id  # this member is running, whatever its heartbeat says
    result = summarise(job, chosen, job.volume_id, live, now)
    if not result.selected and not result.missing:
        print("backup-restore: nothing to restore", file=rt.err)
        return ExitCode.FAILURE
    if rt.args.json:
        if own is not None:
            for one in own.results:
                rt.emit(one.to_dict())
            rt.emit({**own.to_dict(), "member_id": job.member_id})
        rt.emit(result.to_dict())
        return ExitCode.OK if result.complete else ExitCode.FAILURE
    out = rt.out
    if own is not None:
        _section(
            out, "failed here", [f"{printable_key(r.item.key)}: {r.error}" for r in own.failed]
        )
        out.write(
            f"this member ({job.member_id}): restored {own.count(Status.RESTORED)} files"
            f" ({human_size(own.bytes)}), unchanged {own.count(Status.UNCHANGED)},"
            f" taken by another member {own.count(Status.TAKEN)}, failed {len(own.failed)},"
            f" held by other volumes {len(chosen.elsewhere)}\n"
        )
    _job_lines(out, result)
    return ExitCode.OK if result.complete else ExitCode.FAILURE


def _job_lines(out: IO[str], result: JobSummary) -> None:
    def line(entry: dict[str, Any], extra: str) -> str:
        version = entry["version_id"] or entry["version_token"]
        return f"{printable_key(entry['key'])}: version {version}: {extra}"

    _section(out, "failed", [line(e, f"on {e['member_id']}: {e['error']}") for e in result.failed])
    _section(
        out, "in progress", [line(e, f"claimed by {e['member_id']}") for e in result.in_progress]
    )
    _section(
        out,
        "waiting for a member (run the job there)",
        [line(e, f"volume {e['volume_id']} on {e['member_id']}") for e in result.waiting],
    )
    _section(
        out,
        "not held by any live volume (adopt-volume, or restore from a snapshot)",
        [line(e, f"volume {e['volume_id'] or '?'}") for e in result.unheld],
    )
    _section(
        out, "not found", [f"{printable_key(m['key'])}: {m['reason']}" for m in result.missing]
    )
    per_member = ", ".join(f"{m} {n}" for m, n in sorted(result.done_by.items())) or "none"
    out.write(
        f"job {result.job_id}: {'COMPLETE' if result.complete else 'INCOMPLETE'},"
        f" {result.done} of {result.selected} keys done (by member: {per_member}),"
        f" in progress {len(result.in_progress)}, failed {len(result.failed)},"
        f" waiting {len(result.waiting)}, not held by a live volume {len(result.unheld)}"
        + (f", not found {len(result.missing)}" if result.missing else "")
        + "\n"
    )


def _check_writable(directory: Path) -> None:
    """--to DIR: refused before any record is read when nothing could be written there: DIR
    (or the nearest part of it that exists, where the restore would create the rest) must be
    a directory this user may write to."""
    existing = directory
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--to {directory}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--to {directory}: {existing} is not writable by this user")


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
        places = []
        for volume_id in record.holder_volumes():  # with replicas, each group's holder
            member = members.get(volume_id)
            where = f"volume {volume_id}"
            if member is not None:
                where += f" on {member.member_id}"
                if member.availability_zone:
                    where += f" ({member.availability_zone})"
            places.append(where)
        where = ", ".join(places)
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
    """Ctrl-C (or SIGTERM: `timeout`, `systemctl stop` of a unit running it) once: finish the
    files in progress, skip the rest, print the summary.

    Twice: stop at once (files in progress still remove their temp files).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        again = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(
            f"\nbackup-restore: stopping after the files in progress ({again} again to abort)",
            file=err,
        )

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


# -- share ---------------------------------------------------------------------------


def cmd_share(rt: Runtime) -> int:

    args = rt.args
    staging = staging_bucket(rt.config.restore, rt.config.buckets)
    try:
        seconds = duration_seconds(args.expires) if args.expires else None
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    bucket = rt.one_bucket()
    keys = [f"s3://{bucket}/{args.key}"]
    versions = [args.version] if args.version else []

    def run() -> Shared | str:
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
            return choice.reason
        if not _filter_of(args).matches(choice.record):
            return "the version chosen does not match the filters"
        sharer = Sharer(
            rt.clients.s3,
            rt.volume(),
            rt.config.restore,
            staging,
            presigner=rt.clients.s3_presigner(),
            credentials_expiry=rt.clients.credentials_expiry,
        )
        return sharer.share(choice.record, seconds)

    def build(done: Shared | str, who: Actor, at: datetime) -> AuditRecord:
        if isinstance(done, str):  # refused: a failed attempt all the same
            return actions.failed("share", who, at, done, keys=keys, versions=versions)
        return actions.share(done, who, at)

    # A share that raises (credentials about to expire, S3 refusing the upload, a corrupt
    # copy) is recorded as failed, with the key it was asked for, and the error goes on.
    shared = _auditor(rt).around("share", run, build, keys=keys, versions=versions)
    if isinstance(shared, str):
        print(f"backup-restore: {printable_key(f'{args.key}: {shared}')}", file=rt.err)
        return ExitCode.FAILURE
    if shared.cut_short:
        print(f"backup-restore: warning: {shared.cut_short}", file=rt.err)
    if args.json:
        rt.emit(shared.to_dict())
    else:
        rt.out.write(f"{shared.url}\n")
        print(
            f"shared {printable_key(args.key)} ({human_size(shared.record.size or 0)})"
            f" until {shared.expires_at.isoformat(timespec='seconds')}",
            file=rt.err,
        )
    return ExitCode.OK


# -- verify --------------------------------------------------------------------------


def cmd_verify(rt: Runtime) -> int:
    args = rt.args
    buckets = rt.buckets()  # an unknown --source-bucket is refused before any AWS call
    volume = rt.volume()
    held = Held(volume.read_marker().volume_id)
    groups = None if args.offline else replica_groups(rt.config)
    short: list[VersionRecord] = []  # with replicas: held by fewer volumes than asked
    gone: set[str] = set()  # version tokens S3 deleted for good: no group can copy them

    def run() -> VerifyReport:
        records = stored_versions(rt.source, buckets, args.prefix, removed=gone)
        if groups is not None:
            records = _noting_short(records, groups.replicas, short, gone)
        if not args.offline:  # the journal is this volume's own; the table, the fleet's
            records = held.only(records)
        return verify(
            volume,
            records,
            sample=args.sample,
            rng=random.Random(args.seed),  # noqa: S311 - sampling, not cryptography
            workers=max(1, args.workers or rt.config.restore.workers),
            progress=rt.progress("verify"),
        )

    # A verify that raises (the table unreachable, a volume that fails reads) is recorded
    # as failed with the prefix it was asked for, and the error goes on.
    report = _auditor(rt).around(
        "verify",
        run,
        lambda done, who, at: actions.verify(done, who, at, prefix=args.prefix),
        prefix=args.prefix,
    )
    if args.json:
        for problem in report.problems:
            rt.emit(problem.to_dict())
        for record in short:
            rt.emit(_short_row(record, groups.replicas if groups else 1))
        rt.emit(
            {
                **report.to_dict(),
                "under_replicated": len(short),
                "held_by_other_volumes": held.elsewhere,
            }
        )
    else:
        _section(
            rt.out,
            f"held by fewer than {groups.replicas} volumes (fleet.replicas)" if groups else "",
            [
                f"s3://{r.bucket}/{printable_key(r.key)}"
                f" (version {r.version_id or r.version_token}):"
                f" {', '.join(r.holder_volumes()) or 'no volume'}"
                for r in short
            ],
        )
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
            f" {len(report.problems)} problems"
            + (
                f"; {held.elsewhere} versions held by other volumes (verify on their members)"
                if held.elsewhere
                else ""
            )
            + "\n"
        )
    return ExitCode.OK if report.ok and not short else ExitCode.FAILURE


def _noting_short(
    records: Iterator[VersionRecord],
    replicas: int,
    short: list[VersionRecord],
    gone: set[str],
) -> Iterator[VersionRecord]:
    """`records`, passed on; each held by fewer than `replicas` volumes is noted in `short`
    (a replica group that has not copied it yet, or lost it: its dead-letter queue), unless
    S3 deleted it for good (`gone`, filled by `stored_versions` before it yields the
    record): no group can copy it any more, and its copies are verified all the same."""
    for record in records:
        if len(record.holder_volumes()) < replicas and record.version_token not in gone:
            short.append(record)
        yield record


def _short_row(record: VersionRecord, replicas: int) -> dict[str, Any]:
    return {
        "type": "under_replicated",
        "bucket": record.bucket,
        "key": record.key,
        "version_id": record.version_id,
        "version_token": record.version_token,
        "holders": record.holder_volumes(),
        "replicas": replicas,
    }


# -- audit ---------------------------------------------------------------------------


def _add_audit_parser(command: Callable[..., argparse.ArgumentParser]) -> None:
    audit = command(
        "audit",
        cmd_audit,
        "Show who restored, shared, verified or removed what.",
        "backup-restore audit --since 24h",
        "backup-restore audit --since 2026-11-01T00:00:00Z --cloudwatch --json",
    )
    audit.add_argument(
        "--since",
        metavar="WHEN",
        help="a duration back from now (24h, 7d) or an ISO-8601 time (default: everything)",
    )
    audit.add_argument(
        "--cloudwatch",
        action="store_true",
        help="read audit.log_group in CloudWatch Logs (every host; survives the instance)",
    )


def _auditor(rt: Runtime) -> Auditor:
    """The command's trail: the configured volume (when mounted), shipped unless --offline;
    the STS identity asked once, through the command's clients."""
    root: Path | None = rt.config.storage.root
    try:
        Volume(rt.config.storage.root).read_marker()
    except VolumeNotReady:
        root = None  # restoring from a snapshot elsewhere: CloudWatch Logs only
    clients = None if rt.args.offline else rt.clients
    trail = audit_trail(rt.config, clients, root)
    return Auditor(trail, lambda: whoami(None if clients is None else clients.sts()))


def _since(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        pass
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        raise UsageError(f"--since: {text!r} is neither a duration (24h) nor a time") from None


def cmd_audit(rt: Runtime) -> int:
    since = _since(rt.args.since)
    records: list[AuditRecord]
    if rt.args.cloudwatch:
        group = rt.config.audit.log_group
        if not group:
            raise UsageError("--cloudwatch: audit.log_group is not configured")
        records = read_from_logs(rt.clients.logs(), group, since)
    else:
        root = Path(rt.args.root) if rt.args.root else rt.config.storage.root
        Volume(root).read_marker()
        records = list(AuditTrail.on_volume(root).read(since))
    if rt.args.json:
        for record in records:
            rt.emit(record.to_dict())
        return ExitCode.OK
    for record in records:
        what = record.target or record.prefix or (record.keys[0] if record.keys else "")
        aws = f" [{record.who.aws_arn}]" if record.who.aws_arn else ""
        rt.out.write(
            printable_key(
                f"{record.at.isoformat(timespec='seconds')}  {record.who.user}{aws}"
                f"  {record.action} {record.outcome}  {what}"
                f"  {record.files} files {human_size(record.bytes)}"
            )
            + "\n"
        )
    rt.out.write(f"{len(records)} records\n")
    return ExitCode.OK


# -- formatting ----------------------------------------------------------------------


def _report_rejected(rt: Runtime, code: int) -> int:
    """Name the records the source skipped (bad journal lines, malformed items); with any,
    the command fails (1) though it did its work with the rest."""
    rejected = rt.rejected()
    if not rejected:
        return code
    if rt.args.json:
        for bad in rejected:
            rt.emit(
                {"type": "rejected", "source": bad.source, "where": bad.where, "reason": bad.reason}
            )
    else:
        _section(rt.out, f"bad records (skipped): {len(rejected)}", [str(r) for r in rejected])
    return code if code != ExitCode.OK else ExitCode.FAILURE


def _octal_mode(text: str) -> int:
    """``0640`` or ``640``: permission bits only (no setuid, setgid or sticky)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an octal mode like 0640") from None
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text!r}: permission bits only (0000-0777)")
    return mode


if __name__ == "__main__":  # last: every name above is defined by then
    sys.exit(main())
