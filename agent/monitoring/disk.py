"""The disk-space alert: one alert when usage crosses the threshold, one when it recovers.

Recovery needs usage to fall below `threshold - margin` (hysteresis), so a volume
hovering around the threshold does not alert every minute.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from pathlib import Path

import structlog

from agent.monitoring.alerts import Alert, AlertKind
from agent.monitoring.metrics import DiskUsage, DiskUsageReader, disk_usage

log = structlog.get_logger("agent.disk")


class DiskState(enum.Enum):
    UNKNOWN = "unknown"
    OK = "ok"
    LOW = "low"


def _gib(value: int) -> str:
    return f"{value / (1 << 30):.1f} GiB"


class DiskMonitor:
    """Call `check()` periodically; it raises alerts through `alert` on state changes."""

    def __init__(
        self,
        root: Path,
        alert: Callable[[Alert], None],
        *,
        threshold: float = 85.0,
        margin: float = 5.0,
        usage: DiskUsageReader = disk_usage,
    ) -> None:
        self.root = root
        self.alert = alert
        self.threshold = threshold
        self.recover_below = max(0.0, threshold - margin)
        self.usage = usage
        self.state = DiskState.UNKNOWN
        self.last: DiskUsage | None = None

    def check(self) -> DiskState:
        reading = self.usage(self.root)
        self.last = reading
        if reading.percent > self.threshold and self.state is not DiskState.LOW:
            self.state = DiskState.LOW
            log.warning(
                "disk.space_low",
                root=str(self.root),
                used_percent=reading.percent,
                threshold=self.threshold,
                free_bytes=reading.free,
            )
            self.alert(self._alert(AlertKind.DISK_SPACE_LOW, reading))
        elif reading.percent < self.recover_below and self.state is DiskState.LOW:
            self.state = DiskState.OK
            log.info("disk.space_recovered", root=str(self.root), used_percent=reading.percent)
            self.alert(self._alert(AlertKind.DISK_SPACE_RECOVERED, reading))
        elif self.state is DiskState.UNKNOWN:
            self.state = DiskState.OK
        return self.state

    def _alert(self, kind: AlertKind, reading: DiskUsage) -> Alert:
        return Alert(
            kind,
            key=str(self.root),
            summary=(
                f"{self.root} is {reading.percent:.1f}% used ({_gib(reading.free)} free;"
                f" threshold {self.threshold:g}%)"
            ),
            details={
                "root": str(self.root),
                "used_percent": f"{reading.percent:.1f}",
                "free_bytes": str(reading.free),
                "total_bytes": str(reading.total),
                "threshold_percent": f"{self.threshold:g}",
            },
        )
