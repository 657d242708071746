"""Days until the backup volume is full, at its recent growth rate.

The disk job (every minute) hands each reading to `SpaceForecast.add`. The forecast fits a
least-squares line to the *used* bytes of the last `window` (24 h) and divides the room left
above the floor (free bytes minus `storage.min_free_bytes`, where the consumer pauses) by
its slope. Used bytes rather than free bytes: a volume that was grown gains free space
without its data shrinking, and the line must not read that as the data shrinking.

* Unknown (None: no gauge value, the alarm treats it as not breaching) until the readings
  span `min_span` (3 h). With a `history` file (the daemon's: `forecast.json` in systemd's
  `$STATE_DIRECTORY`, on the root file system, so a full backup volume cannot stop it) the
  readings are saved every `save_every` (10 min) and at stop, and loaded at start: a restart
  does not reset DaysUntilFull. What is loaded is checked like any input: another root,
  readings from the future or older than the window, and a malformed file are dropped (the
  forecast starts over, logged, never a crash).
* Not growing (a slope of zero or less, e.g. garbage collection outpacing backups):
  `NOT_GROWING_DAYS`, so the gauge keeps a value an alarm can compare.
* Already at or below the floor: 0.

One `disk_filling` alert when the forecast drops below `alerts.days_until_full`; re-armed
once it is back above that threshold by a quarter (so a forecast hovering at the threshold
does not alert every minute).
"""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.monitoring.alerts import Alert, disk_filling
from agent.monitoring.metrics import DiskUsage
from agent.storage.volume import atomic_write_bytes

log = structlog.get_logger("agent.forecast")

DAY = 86400.0
WINDOW_SECONDS = DAY
MIN_SPAN_SECONDS = 3 * 3600.0
NOT_GROWING_DAYS = 3650.0  # "not filling up": ten years, a value CloudWatch can store
REARM_FACTOR = 1.25
SAVE_EVERY_SECONDS = 600.0
HISTORY_FORMAT = 1


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
        history: Path | None = None,
        save_every: float = SAVE_EVERY_SECONDS,
    ) -> None:
        self.root = root
        self.floor = floor
        self.threshold_days = threshold_days
        self.alert = alert
        self.window = window
        self.min_span = min_span
        self.clock = clock
        self.history = history
        self.save_every = save_every
        self._readings: collections.deque[Reading] = collections.deque()
        self._sums = _Sums()
        self._lock = threading.Lock()
        self._alerted = False
        self._saved_at_ms: int | None = None
        if history is not None:
            self.load()

    def add(self, usage: DiskUsage) -> float | None:
        """Record a reading (taken now); alert on crossing the threshold. Returns the days."""
        now_ms = round(self.clock() * 1000)
        reading = Reading(now_ms, usage.used, usage.free)
        with self._lock:
            self._readings.append(reading)
            self._sums.add(reading)
            while now_ms - self._readings[0].at_ms > self.window * 1000:
                self._sums.add(self._readings.popleft(), sign=-1)
        if self._saved_at_ms is None or now_ms - self._saved_at_ms >= self.save_every * 1000:
            self.save()
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

    # -- the history file --------------------------------------------------------------

    def save(self) -> None:
        """Write the readings to `history` (atomically); best effort, logged on failure."""
        if self.history is None:
            return
        with self._lock:
            rows = [[r.at_ms, r.used, r.free] for r in self._readings]
            self._saved_at_ms = round(self.clock() * 1000)
        document = {"format": HISTORY_FORMAT, "root": self.root, "readings": rows}
        try:
            self.history.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.history, json.dumps(document).encode())
        except OSError as exc:
            log.warning("forecast.save_failed", path=str(self.history), error=str(exc))

    def load(self) -> int:
        """Take the readings saved by a previous run; returns how many were kept."""
        assert self.history is not None
        try:
            document = json.loads(self.history.read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.warning("forecast.history_unreadable", path=str(self.history), error=str(exc))
            return 0
        readings = _readings_of(document, self.root)
        if readings is None:
            log.warning("forecast.history_ignored", path=str(self.history), root=self.root)
            return 0
        now_ms = round(self.clock() * 1000)
        kept = [r for r in readings if 0 <= now_ms - r.at_ms <= self.window * 1000]
        with self._lock:
            for reading in sorted(kept, key=lambda r: r.at_ms):
                self._readings.append(reading)
                self._sums.add(reading)
        log.info("forecast.history_loaded", path=str(self.history), readings=len(kept))
        return len(kept)


def _readings_of(document: Any, root: str) -> list[Reading] | None:
    """The readings of a saved history, or None when it is not one of `root`'s."""
    if not isinstance(document, dict) or document.get("format") != HISTORY_FORMAT:
        return None
    if document.get("root") != root or not isinstance(document.get("readings"), list):
        return None
    readings = []
    for row in document["readings"]:
        if not (
            isinstance(row, list)
            and len(row) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row)
        ):
            return None
        readings.append(Reading(row[0], row[1], row[2]))
    return readings
