"""systemd notifications (Type=notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

A no-op when $NOTIFY_SOCKET is unset (not started by systemd, or in tests).
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None

    def _send(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def ready(self, status: str = "") -> None:
        self._send("READY=1", f"STATUS={status}" if status else "STATUS=running")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self, status: str | None = None) -> None:
        lines = ["WATCHDOG=1"]
        if status:
            lines.append(f"STATUS={status}")
        self._send(*lines)

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping: draining in-flight backups")
