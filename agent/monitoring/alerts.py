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
    AlertKind.DIGEST: "Daily backup digest",
}
SEVERITY = {
    AlertKind.DISK_SPACE_RECOVERED: "info",
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
