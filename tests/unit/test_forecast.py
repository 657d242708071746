"""Days until the volume is full, from a synthetic usage series and the fake clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.monitoring.alerts import Alert, AlertKind
from agent.monitoring.forecast import NOT_GROWING_DAYS, SpaceForecast
from agent.monitoring.metrics import DiskUsage
from tests.support.clock import FakeClock

GiB = 1 << 30
TOTAL = 1000 * GiB
FLOOR = GiB


def usage(used: float, total: int = TOTAL) -> DiskUsage:
    used = int(used)
    return DiskUsage(total, used, total - used, round(100 * used / total, 1))


class Series:
    """A forecast fed one reading a minute (the disk job's schedule) by the fake clock."""

    def __init__(self, threshold_days: float = 7.0) -> None:
        self.clock = FakeClock()
        self.alerts: list[Alert] = []
        self.forecast = SpaceForecast(
            "/mnt/backups",
            FLOOR,
            threshold_days=threshold_days,
            alert=self.alerts.append,
            clock=self.clock.seconds,
        )
        self.used = 0.0

    def run(self, hours: float, growth_per_day: float, total: int = TOTAL) -> float | None:
        """Readings every minute for `hours` while used space grows at `growth_per_day`."""
        days = None
        for _ in range(int(hours * 60)):
            self.clock.advance(minutes=1)
            self.used += growth_per_day / 1440
            days = self.forecast.add(usage(self.used, total))
        return days


def test_unknown_until_three_hours_of_readings():
    series = Series()
    series.used = 500 * GiB
    assert series.run(hours=2.9, growth_per_day=10 * GiB) is None
    assert series.forecast.days_until_full() is None
    assert series.run(hours=0.2, growth_per_day=10 * GiB) is not None


def test_a_steady_growth_gives_the_room_above_the_floor_over_the_rate():
    series = Series()
    series.used = 900 * GiB
    days = series.run(hours=6, growth_per_day=10 * GiB)
    room = TOTAL - series.used - FLOOR
    assert days == pytest.approx(room / (10 * GiB), rel=1e-3)  # ≈ 9.9 days
    assert series.forecast.growth_per_day() == pytest.approx(10 * GiB, rel=1e-6)
    assert series.alerts == []  # above the 7-day threshold


def test_one_alert_when_the_forecast_drops_below_the_threshold_before_the_percent_alarm():
    series = Series(threshold_days=7)
    series.used = 500 * GiB  # half full: the 85 % alarm is far off
    series.run(hours=6, growth_per_day=20 * GiB)  # ≈ 25 days
    assert series.alerts == []
    series.run(hours=12, growth_per_day=150 * GiB)  # a surge: ≈ 3 days at the new rate
    (alert,) = series.alerts
    assert alert.kind is AlertKind.DISK_FILLING
    assert "will reach its free-space floor in" in alert.summary
    assert float(alert.details["days_until_full"]) < 7
    assert usage(series.used).percent < 85
    series.run(hours=6, growth_per_day=150 * GiB)
    assert len(series.alerts) == 1  # still below: no repeat


def test_the_alert_is_re_armed_only_well_above_the_threshold():
    series = Series(threshold_days=7)
    series.used = 800 * GiB
    series.run(hours=24, growth_per_day=40 * GiB)  # ≈ 4.5 days
    assert len(series.alerts) == 1
    series.run(hours=24, growth_per_day=20 * GiB)  # ≈ 8 days: above 7, below 7 x 1.25
    series.run(hours=24, growth_per_day=60 * GiB)  # below again: still the same episode
    assert len(series.alerts) == 1
    series.run(hours=30, growth_per_day=0)  # flat for a day: not growing
    assert series.forecast.days_until_full() == NOT_GROWING_DAYS
    series.run(hours=24, growth_per_day=40 * GiB)
    assert len(series.alerts) == 2


def test_shrinking_usage_is_not_growing_and_a_volume_at_its_floor_is_full_now():
    series = Series()
    series.used = 600 * GiB
    assert series.run(hours=5, growth_per_day=-30 * GiB) == NOT_GROWING_DAYS
    series.used = TOTAL - FLOOR
    assert series.run(hours=1, growth_per_day=0) == 0.0


def test_growing_the_volume_adds_room_without_bending_the_rate():
    series = Series()
    series.used = 950 * GiB
    before = series.run(hours=6, growth_per_day=10 * GiB)
    after = series.run(hours=1, growth_per_day=10 * GiB, total=2 * TOTAL)  # resized
    assert series.forecast.growth_per_day() == pytest.approx(10 * GiB, rel=1e-6)
    assert before is not None and after is not None and after > before + 90


def test_only_the_last_day_counts():
    series = Series()
    series.used = 100 * GiB
    series.run(hours=24, growth_per_day=200 * GiB)
    series.run(hours=25, growth_per_day=5 * GiB)
    assert series.forecast.growth_per_day() == pytest.approx(5 * GiB, rel=1e-3)
    series.clock.advance(timedelta(days=2))  # a gap: the old readings fall out of the window
    series.forecast.add(usage(series.used))
    assert series.forecast.days_until_full() is None
