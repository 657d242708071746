"""What an alert is, and the alerts the agent raises.

An `Alert` is one thing that went wrong (or, for the digest and a recovered disk, one
thing worth telling); its `AlertKind` decides the title and which channels carry it. A
`Notice` is what is delivered: one alert, or a summary of many of one kind. The
dispatcher (dispatcher.py) turns alerts into notices; channels.py renders and sends them.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


class AlertKind(enum.Enum):
    BACKUP_FAILED = "backup_failed"
    DEAD_LETTER = "dead_letter"
    DISK_SPACE_LOW = "disk_space_low"
    DISK_SPACE_RECOVERED = "disk_space_recovered"
    INTEGRITY_FAILURE = "integrity_failure"
    CONFIG_REJECTED = "config_rejected"
    AGENT_STOPPED = "agent_stopped_on_error"
    OPERATIONAL = "operational"  # volume not ready, volume unencrypted, a job's finding
    BACKUPS_PAUSED = "backups_paused"  # no volume or no room: the consumer stopped receiving
    BACKUPS_RESUMED = "backups_resumed"
    HELD_BACK = "held_back"  # one object larger than the room left: given back for later
    DISK_FILLING = "disk_filling"  # forecast: full within alerts.days_until_full
    DIGEST = "digest"


TITLES = {
    AlertKind.BACKUP_FAILED: "Backup failed for good",
    AlertKind.DEAD_LETTER: "Messages in the dead-letter queue",
    AlertKind.DISK_SPACE_LOW: "Backup volume is filling up",
    AlertKind.DISK_SPACE_RECOVERED: "Backup volume space recovered",
    AlertKind.INTEGRITY_FAILURE: "Integrity check failed",
    AlertKind.CONFIG_REJECTED: "Configuration rejected",
    AlertKind.AGENT_STOPPED: "Backup agent stopped on an error",
    AlertKind.OPERATIONAL: "Backup agent needs attention",
    AlertKind.BACKUPS_PAUSED: "Backups paused: the backup volume cannot take more",
    AlertKind.BACKUPS_RESUMED: "Backups resumed",
    AlertKind.HELD_BACK: "Object too large for the space left: held back",
    AlertKind.DISK_FILLING: "Backup volume forecast to be full soon",
    AlertKind.DIGEST: "Daily backup digest",
}
SEVERITY = {
    AlertKind.DISK_SPACE_RECOVERED: "info",
    AlertKind.BACKUPS_RESUMED: "info",
    AlertKind.DIGEST: "info",
}


@dataclass(frozen=True)
class Alert:
    """One thing that went wrong. `key` names it: equal keys in a window count once."""

    kind: AlertKind
    key: str
    summary: str
    details: Mapping[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Notice:
    """What is delivered: one alert, or a summary of `count` alerts of one kind."""

    kind: AlertKind
    count: int
    examples: tuple[Alert, ...]
    first_at: float
    last_at: float
    is_summary: bool = False

    @property
    def distinct(self) -> int:
        return len({a.key for a in self.examples})


def backup_gave_up(message_id: str, reasons: Sequence[str]) -> Alert:
    first = reasons[0] if reasons else "no reason recorded"
    return Alert(
        AlertKind.BACKUP_FAILED,
        key=message_id,
        summary=f"message {message_id}: {first}",
        details={f"also {n}": r for n, r in enumerate(reasons[1:5], start=2)},
    )


def integrity_failure(where: str, error: str) -> Alert:
    return Alert(
        AlertKind.INTEGRITY_FAILURE, key=where, summary=f"{where}: {error}", details={"at": where}
    )


def operational(subject: str, detail: str) -> Alert:
    return Alert(AlertKind.OPERATIONAL, key=subject, summary=f"{subject}: {detail}")


def agent_stopped(error: BaseException) -> Alert:
    text = f"{type(error).__name__}: {error}"
    return Alert(AlertKind.AGENT_STOPPED, key=text, summary=text)


def config_rejected(path: str, problems: Sequence[str]) -> Alert:
    return Alert(
        AlertKind.CONFIG_REJECTED,
        key=path,
        summary=f"{path}: {len(problems)} problem(s)",
        details={f"problem {n + 1}": p for n, p in enumerate(problems[:20])},
    )


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 60:.0f} minutes"


def _optional(value: int | None) -> str:
    return "unknown" if value is None else str(value)


def backups_paused(
    root: str, reason: str, free_bytes: int | None, retention_seconds: float | None
) -> Alert:
    """The consumer stopped receiving; events wait in the queue, up to its retention."""
    waits = (
        f"events wait in the queue for up to {_duration(retention_seconds)} (its retention)"
        if retention_seconds
        else "events wait in the queue, up to its retention period"
    )
    return Alert(
        AlertKind.BACKUPS_PAUSED,
        key=root,
        summary=f"{reason}; {waits}",
        details={
            "root": root,
            "reason": reason,
            "free_bytes": _optional(free_bytes),
            "queue_retention_seconds": _optional(
                None if retention_seconds is None else int(retention_seconds)
            ),
        },
    )


def backups_resumed(root: str, paused_seconds: float, free_bytes: int | None) -> Alert:
    return Alert(
        AlertKind.BACKUPS_RESUMED,
        key=root,
        summary=f"{root}: backups resumed after {_duration(paused_seconds)} paused",
        details={
            "root": root,
            "paused_seconds": f"{paused_seconds:.0f}",
            "free_bytes": _optional(free_bytes),
        },
    )


def held_back(
    where: str,
    size: int | None,
    free_bytes: int | None,
    hold_seconds: int,
    receive_count: int,
    max_receive_count: int,
) -> Alert:
    shown = "an unknown number of" if size is None else str(size)
    left = max(0, max_receive_count - receive_count)
    return Alert(
        AlertKind.HELD_BACK,
        key=where,
        summary=(
            f"{where}: {shown} bytes do not fit in the space left ({_optional(free_bytes)} bytes"
            f" free); held back for {_duration(hold_seconds)}, {left} receive(s) left before"
            " the dead-letter queue"
        ),
        details={
            "object": where,
            "size_bytes": _optional(size),
            "free_bytes": _optional(free_bytes),
            "hold_seconds": str(hold_seconds),
            "receive_count": str(receive_count),
            "max_receive_count": str(max_receive_count),
        },
    )


def disk_filling(root: str, days: float, threshold: float, free_bytes: int, rate: float) -> Alert:
    return Alert(
        AlertKind.DISK_FILLING,
        key=root,
        summary=(
            f"{root} will reach its free-space floor in {days:.1f} days at the recent growth"
            f" of {rate / (1 << 30):.2f} GiB/day (alert below {threshold:g} days)"
        ),
        details={
            "root": root,
            "days_until_full": f"{days:.2f}",
            "threshold_days": f"{threshold:g}",
            "free_bytes": str(free_bytes),
            "growth_bytes_per_day": f"{rate:.0f}",
        },
    )
