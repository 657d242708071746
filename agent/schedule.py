"""When snapshots are due: a cron expression (UTC) or an interval string ("6h", "1d12h").

`parse_schedule` validates (config uses it); `Schedule.trigger()` is what the job
scheduler registers; `Schedule.max_gap()` is the longest wait between two runs, which
is what the snapshot-age alarm allows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent.config import parse_duration

MIN_INTERVAL = timedelta(minutes=5)
_INTERVAL = re.compile(r"(?:every\s+)?((?:\d+\s*[smhdw]\s*)+)", re.IGNORECASE)
# A cron schedule's longest gap is measured over this window (covers weekly and monthly).
_GAP_WINDOW = timedelta(days=62)


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    interval: timedelta | None = None
    cron: str | None = None

    def trigger(self) -> Any:
        """An APScheduler trigger (UTC) for this schedule."""
        if self.interval is not None:
            return IntervalTrigger(seconds=int(self.interval.total_seconds()), timezone=UTC)
        return CronTrigger.from_crontab(self.cron, timezone=UTC)

    def next_after(self, moment: datetime) -> datetime:
        if self.interval is not None:
            return moment + self.interval
        fire: datetime = self.trigger().get_next_fire_time(None, moment + timedelta(seconds=1))
        return fire

    def max_gap(self) -> timedelta:
        """The longest time between two consecutive runs."""
        if self.interval is not None:
            return self.interval
        trigger = self.trigger()
        start = datetime(2024, 1, 1, tzinfo=UTC)  # a leap year, Monday
        previous: datetime = trigger.get_next_fire_time(None, start)
        widest = timedelta(0)
        while previous < start + _GAP_WINDOW:
            following: datetime = trigger.get_next_fire_time(previous, previous)
            widest = max(widest, following - previous)
            previous = following
        return widest


def parse_schedule(text: str) -> Schedule:
    """Parse and validate; raise ValueError saying what is wrong."""
    stripped = text.strip()
    match = _INTERVAL.fullmatch(stripped)
    if match:
        interval = parse_duration(match.group(1))
        if interval < MIN_INTERVAL:
            raise ValueError(f"interval {text!r} is shorter than {MIN_INTERVAL}")
        return Schedule(stripped, interval=interval)
    if len(stripped.split()) != 5:
        raise ValueError(
            f"{text!r} is neither an interval (6h, 1d, 1h30m) nor a 5-field cron expression"
        )
    try:
        CronTrigger.from_crontab(stripped, timezone=UTC)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a valid cron expression: {exc}") from None
    return Schedule(stripped, cron=stripped)
