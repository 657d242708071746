"""Days until the backup volume is full, at its recent growth rate.

The disk job (every minute) hands each reading to `SpaceForecast.add`. The forecast fits a
least-squares line to the *used* bytes of the last `window` (24 h) and divides the room left
above the floor (free bytes minus `storage.min_free_bytes`, where the consumer pauses) by
its slope. Used bytes rather than free bytes: a volume that was grown gains free space
without its data shrinking, and the line must not read that as the data shrinking.

* Unknown (None: no gauge value, the alarm treats it as not breaching) until the readings
  span `min_span` (3 h). The history lives in memory: after a restart the forecast is
  unknown for that long again.
* Not growing (a slope of zero or less, e.g. garbage collection outpacing backups):
  `NOT_GROWING_DAYS`, so the gauge keeps a value an alarm can compare.
* Already at or below the floor: 0.

One `disk_filling` alert when the forecast drops below `alerts.days_until_full`; re-armed
once it is back above that threshold by a quarter (so a forecast hovering at the threshold
does not alert every minute).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agent.monitoring.alerts import Alert, disk_filling
from agent.monitoring.metrics import DiskUsage

log = structlog.get_logger("agent.forecast")

DAY = 86400.0
WINDOW_SECONDS = DAY
MIN_SPAN_SECONDS = 3 * 3600.0
NOT_GROWING_DAYS = 3650.0  # "not filling up": ten years, a value CloudWatch can store
REARM_FACTOR = 1.25


@dataclass(frozen=True, slots=True)
class Reading:
    at_ms: int  # whole milliseconds: the sums below stay exact integers
    used: int
    free: int


class _Sums:
    """Running sums for the least-squares slope, exact in integers (no cancellation error
    however large the timestamps and byte counts)."""

    def __init__(self) -> None:
        self.n = self.t = self.u = self.tt = self.tu = 0

    def add(self, r: Reading, sign: int = 1) -> None:
        self.n += sign
        self.t += sign * r.at_ms
        self.u += sign * r.used
        self.tt += sign * r.at_ms * r.at_ms
        self.tu += sign * r.at_ms * r.used

    def slope_per_ms(self) -> float | None:
        spread = self.n * self.tt - self.t * self.t
        if spread <= 0:
            return None
        return (self.n * self.tu - self.t * self.u) / spread


class SpaceForecast:
    """Keeps the recent disk readings; answers days until full; alerts below the threshold."""

    def __init__(
        self,
        root: str,
        floor: int,
        *,
        threshold_days: float,
        alert: Callable[[Alert], None],
        window: float = WINDOW_SECONDS,
        min_span: float = MIN_SPAN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.floor = floor
        self.threshold_days = threshold_days
        self.alert = alert
        self.window = window
        self.min_span = min_span
        self.clock = clock
        self._readings: collections.deque[Reading] = collections.deque()
        self._sums = _Sums()
        self._lock = threading.Lock()
        self._alerted = False

    def add(self, usage: DiskUsage) -> float | None:
        """Record a reading (taken now); alert on crossing the threshold. Returns the days."""
        now_ms = round(self.clock() * 1000)
        reading = Reading(now_ms, usage.used, usage.free)
        with self._lock:
            self._readings.append(reading)
            self._sums.add(reading)
            while now_ms - self._readings[0].at_ms > self.window * 1000:
                self._sums.add(self._readings.popleft(), sign=-1)
        days = self.days_until_full()
        if days is None:
            return None
        if days < self.threshold_days and not self._alerted:
            self._alerted = True
            rate = self.growth_per_day() or 0.0
            log.warning(
                "disk.filling",
                root=self.root,
                days_until_full=round(days, 2),
                threshold_days=self.threshold_days,
                growth_bytes_per_day=round(rate),
            )
            self.alert(disk_filling(self.root, days, self.threshold_days, usage.free, rate))
        elif self._alerted and days >= self.threshold_days * REARM_FACTOR:
            self._alerted = False
            log.info("disk.filling_eased", root=self.root, days_until_full=round(days, 2))
        return days

    def growth_per_day(self) -> float | None:
        """Bytes per day by which used space grows (least squares), None without history."""
        with self._lock:
            if not self._readings:
                return None
            span_ms = self._readings[-1].at_ms - self._readings[0].at_ms
            if span_ms < self.min_span * 1000:
                return None
            slope = self._sums.slope_per_ms()
        return None if slope is None else slope * DAY * 1000

    def days_until_full(self) -> float | None:
        rate = self.growth_per_day()
        if rate is None:
            return None
        with self._lock:
            latest = self._readings[-1]
        room = latest.free - self.floor
        if room <= 0:
            return 0.0
        if rate <= 0:
            return NOT_GROWING_DAYS
        return min(NOT_GROWING_DAYS, room / rate)
