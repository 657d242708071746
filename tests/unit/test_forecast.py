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


# -- the history survives a restart (issue 17) ----------------------------------------------


def persisted(path, clock: FakeClock, alerts: list[Alert] | None = None) -> SpaceForecast:
    return SpaceForecast(
        "/mnt/backups",
        FLOOR,
        threshold_days=7.0,
        alert=(alerts if alerts is not None else []).append,
        clock=clock.seconds,
        history=path,
    )


def feed(forecast: SpaceForecast, clock: FakeClock, used: float, hours: float, per_day: float):
    days = None
    for _ in range(int(hours * 60)):
        clock.advance(minutes=1)
        used += per_day / 1440
        days = forecast.add(usage(used))
    return used, days


def test_a_restart_keeps_days_until_full(tmp_path):
    path, clock = tmp_path / "state" / "forecast.json", FakeClock()
    before = persisted(path, clock)
    used, days = feed(before, clock, 900 * GiB, hours=4, per_day=10 * GiB)
    assert days is not None
    before.save()  # what Monitoring.stop does

    clock.advance(minutes=2)  # the restart
    after = persisted(path, clock)
    assert after.days_until_full() == pytest.approx(days, rel=1e-6)  # known at once
    _, later = feed(after, clock, used, hours=1, per_day=10 * GiB)
    assert later == pytest.approx((TOTAL - used - FLOOR - 10 * GiB / 24) / (10 * GiB), rel=0.01)


def test_readings_are_saved_every_ten_minutes_without_a_clean_stop(tmp_path):
    path, clock = tmp_path / "forecast.json", FakeClock()
    feed(persisted(path, clock), clock, 900 * GiB, hours=4, per_day=10 * GiB)
    # killed: no save() at stop; at most the last 10 minutes are lost
    after = persisted(path, clock)
    assert after.days_until_full() is not None
    assert len(after._readings) >= 4 * 60 - 10


def test_a_history_older_than_the_window_or_of_another_root_is_not_used(tmp_path):
    path, clock = tmp_path / "forecast.json", FakeClock()
    before = persisted(path, clock)
    feed(before, clock, 900 * GiB, hours=4, per_day=10 * GiB)
    before.save()
    clock.advance(days=2)  # down longer than the 24 h window
    assert persisted(path, clock).days_until_full() is None

    clock.advance(days=-2)
    other = SpaceForecast(
        "/mnt/other", FLOOR, threshold_days=7.0, alert=[].append, clock=clock.seconds, history=path
    )
    assert other.days_until_full() is None and len(other._readings) == 0


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"format": 1, "root": "/mnt/backups", "readings": [[1, 2]]}',
        b'{"format": 1, "root": "/mnt/backups", "readings": [[1, -2, 3]]}',
        b'{"format": 1, "root": "/mnt/backups", "readings": [["1", 2, 3]]}',
        b'{"format": 2, "root": "/mnt/backups", "readings": []}',
        b"[]",
    ],
)
def test_a_malformed_history_starts_over_without_failing(tmp_path, content):
    path = tmp_path / "forecast.json"
    path.write_bytes(content)
    forecast = persisted(path, FakeClock())
    assert len(forecast._readings) == 0
    forecast.add(usage(500 * GiB))  # and the next save replaces it
    assert b'"format": 1' in path.read_bytes()


def test_readings_from_the_future_are_dropped(tmp_path):
    path, clock = tmp_path / "forecast.json", FakeClock()
    before = persisted(path, clock)
    feed(before, clock, 900 * GiB, hours=4, per_day=10 * GiB)
    before.save()
    clock.advance(hours=-2)  # the clock went back
    after = persisted(path, clock)
    assert all(r.at_ms <= clock.seconds() * 1000 for r in after._readings)
    assert len(after._readings) == pytest.approx(2 * 60, abs=2)


def test_an_unwritable_history_is_logged_and_the_forecast_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    forecast = persisted(blocker / "forecast.json", FakeClock())  # its parent is a file
    assert forecast.add(usage(500 * GiB)) is None  # no exception
