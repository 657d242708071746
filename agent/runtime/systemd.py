"""systemd notifications (Type=notify): READY=1, STATUS=, WATCHDOG=1, STOPPING=1.

A no-op when $NOTIFY_SOCKET is unset (not started by systemd, or in tests).
With `WatchdogSec=` systemd sets $WATCHDOG_USEC; `ping_interval` turns it into how often
the main loop must send WATCHDOG=1 (half the interval, as sd_watchdog_enabled(3) advises).
"""

from __future__ import annotations

import os

import sdnotify


class Notifier:
    def __init__(self) -> None:
        self._enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = sdnotify.SystemdNotifier() if self._enabled else None

    def ping_interval(self, default: float) -> float:
        """Seconds between WATCHDOG=1 pings: `default`, or less when systemd asks for it."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not self._enabled or not usec.isdigit() or int(usec) == 0:
            return default
        if pid and pid != str(os.getpid()):
            return default  # meant for another process
        return min(default, int(usec) / 2_000_000)

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
