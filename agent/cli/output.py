"""What the CLIs print: formatting only, the data comes from elsewhere.

Sizes made readable (`human_size`); `printable_key`, the one sanitiser every text shown to
a person goes through (keys, paths, tags, config problems, exception text; `PrintableLines`
applies it to a whole stream); the table of `backup-restore snapshots` and the summary of
one `backup-agent snapshot` run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from agent.snapshots.records import Snapshot, SnapshotRun


def print_snapshots(
    snapshots: Iterable[Snapshot], out: IO[str] | None = None, now: datetime | None = None
) -> int:
    """A table for `backup-restore snapshots`; returns the number of rows."""
    stream = out or sys.stdout
    now = now or datetime.now(UTC)
    rows = list(snapshots)
    if not rows:
        print("no snapshots taken by backup-agent", file=stream)
        return 0
    header = ("SNAPSHOT", "VOLUME", "REGION", "STATE", "TAKEN (UTC)", "AGE", "JOURNAL POSITION")
    lines: list[tuple[str, ...]] = [header]
    for s in rows:
        cells = (
            s.snapshot_id,
            s.volume_id,
            s.region,
            s.state if s.state != "pending" else f"pending {s.progress}".strip(),
            s.taken_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"),
            _age(now - s.taken_at),
            s.journal_position or "-",
        )
        lines.append(tuple(printable_key(cell) for cell in cells))  # tags anyone may set
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print(
            "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip(), file=stream
        )
    return len(rows)


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    return f"{seconds // 60}m"


def describe_run(run: SnapshotRun, out: IO[str] | None = None) -> None:
    """What `backup-agent snapshot` prints."""
    stream = PrintableLines(out or sys.stdout)
    if run.state == "dry-run":
        print(f"dry run: would snapshot {run.volume_id} (flush: {run.flush})", file=stream)
        for key, value in sorted(run.tags.items()):
            print(f"  tag {key}={value}", file=stream)
        for snapshot_id in run.deleted:
            print(f"  would delete {snapshot_id} (retention)", file=stream)
        return
    took = f" in {run.duration_seconds:.0f} s" if run.duration_seconds is not None else ""
    print(
        f"snapshot {run.snapshot_id} of {run.volume_id}: {run.state}{took}"
        f" (journal {run.journal_position or '-'}, flush {run.flush})",
        file=stream,
    )
    if run.message and run.state != "completed":
        print(f"  {run.message}", file=stream)
    if run.copy_snapshot_id:
        print(f"  copied as {run.copy_snapshot_id}", file=stream)
    for snapshot_id in run.deleted:
        print(f"  deleted {snapshot_id} (retention)", file=stream)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def printable_key(text: object) -> str:
    """`text` safe to show a person on one line: the one sanitiser of both CLIs.

    Every character that is not printable (controls such as ESC, DEL and the C1 CSI,
    line breaks, bidirectional overrides, unassigned code points) is shown as its escape
    (``\\x1b``, ``\\n``, ``\\u202e``), so a key, a path, a tag or an error message can
    neither move the cursor, retitle the terminal, hide text nor fake another line.
    Idempotent: an escaped text is printed as it is.
    """
    shown = str(text)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown)


class PrintableLines:
    """A text stream whose every line goes through `printable_key` on its way out.

    For code below the CLI that prints for a person (agent/snapshots/mount.py) and cannot
    import it: the CLI hands it this instead of sys.stdout. Line breaks are kept.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write("\n".join(printable_key(line) for line in text.split("\n")))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _ago(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "never"
    return f"{timedelta(seconds=int(seconds))} ago"


def status_lines(report: dict[str, Any]) -> list[str]:
    """`backup-agent status` for a person: one line per subject, the problems last."""
    agent = report.get("agent") or {}
    volume = report.get("volume") or {}
    queue = report.get("queue") or {}
    lines = [f"health:      {report.get('health', '?').upper()}"]
    state = agent.get("state", "?")
    if state == "paused":
        state += f" ({agent.get('paused_reason') or 'no reason given'})"
    if agent.get("pid") and state != "never started":
        state += f", pid {agent['pid']}, version {agent.get('version')}"
        state += f", started {agent.get('started')}"
    lines.append(f"agent:       {state}")
    lines.append(f"version:     backup-agent {report.get('version')} (this command)")
    lines.append(f"config:      {report.get('config')}")
    space = ""
    if "free_bytes" in volume:
        space = (
            f", {human_size(volume['used_bytes'])} used, {human_size(volume['free_bytes'])} free"
        )
    marker = f"marker {volume['marker']}" if volume.get("marker") else "NO MARKER"
    mounted = "mounted" if volume.get("mounted") else "not a mount point"
    lines.append(f"volume:      {volume.get('root')}: {mounted}, {marker}{space}")
    if "error" in queue:
        lines.append(f"queue:       {queue.get('url')}: {queue['error']}")
    else:
        lines.append(
            f"queue:       {queue.get('visible')} waiting, {queue.get('in_flight')} in flight;"
            f" dead-letter queue: {queue.get('dead_letter')}"
        )
    if agent.get("pid"):
        lag = agent.get("last_lag_seconds")
        lag_text = f", lag {lag:.1f} s" if isinstance(lag, int | float) else ""
        lines.append(
            f"backups:     last success {_ago(agent.get('seconds_since_last_success'))}{lag_text};"
            f" in flight {agent.get('in_flight')};"
            f" failed in the last hour {agent.get('failures_last_hour')}"
        )
    for job, record in (report.get("jobs") or {}).items():
        if record is None:
            text = "no " + job + " has ever run"
        elif isinstance(record, str):
            text = record
        elif job == "snapshot":
            text = f"{record.get('snapshot_id')} {record.get('state')} at {record.get('taken_at')}"
        else:
            when = record.get("finished_at") or record.get("started_at")
            text = f"{record.get('outcome')} at {when}"
        lines.append(f"{job + ':':<12} {text}")
    for problem in report.get("problems") or []:
        lines.append(f"problem:     {problem}")
    return lines
