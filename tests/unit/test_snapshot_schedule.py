"""Schedules: cron (UTC) or intervals; when they fire and the longest gap between runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.schedule import parse_schedule


@pytest.mark.parametrize(
    ("text", "gap"),
    [
        ("6h", timedelta(hours=6)),
        ("every 1d", timedelta(days=1)),
        ("1h30m", timedelta(minutes=90)),
        ("0 3 * * *", timedelta(days=1)),
        ("0 */6 * * *", timedelta(hours=6)),
        ("30 2 * * 0", timedelta(weeks=1)),
        ("0 1,13 * * *", timedelta(hours=12)),
        ("0 3 * * 1-5", timedelta(days=3)),  # Friday 03:00 to Monday 03:00
    ],
)
def test_longest_gap(text, gap):
    assert parse_schedule(text).max_gap() == gap


def test_the_cron_schedule_fires_at_its_times():
    schedule = parse_schedule("15 3 * * *")
    trigger = schedule.trigger()
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, now)
    assert first == datetime(2026, 6, 2, 3, 15, tzinfo=UTC)
    assert trigger.get_next_fire_time(first, first) == datetime(2026, 6, 3, 3, 15, tzinfo=UTC)
    assert schedule.next_after(now) == first


def test_the_interval_schedule_fires_every_interval():
    schedule = parse_schedule("6h")
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert schedule.next_after(start) == start + timedelta(hours=6)
    assert schedule.trigger().interval == timedelta(hours=6)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1m", "shorter than"),
        ("daily", "neither an interval"),
        ("61 3 * * *", "not a valid cron"),
        ("* * *", "neither an interval"),
    ],
)
def test_bad_schedules_are_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_schedule(text)
