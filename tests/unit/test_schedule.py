"""The one schedule grammar: every accepted and refused form, when it fires, the longest gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from agent.schedule import Schedule, cron, every, format_duration, parse_duration, parse_schedule

H = timedelta(hours=1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # intervals: units s m h d w, summed, optionally after "every"
        ("6h", Schedule(every=6 * H)),
        ("90s", Schedule(every=timedelta(seconds=90))),
        ("1h30m", Schedule(every=timedelta(minutes=90))),
        ("1d 12H", Schedule(every=36 * H)),
        ("every 6h", Schedule(every=6 * H)),
        ("Every  2w", Schedule(every=timedelta(weeks=2))),
        ("0.5s", Schedule(every=timedelta(seconds=0.5))),
        # cron lines: 5 fields, UTC
        ("0 3 * * *", Schedule(cron="0 3 * * *")),
        ("  */15   *  * * 1-5 ", Schedule(cron="*/15 * * * 1-5")),
        # the mapping forms of the old config Schedule
        ({"every": 60}, Schedule(every=timedelta(seconds=60))),
        ({"every": "6h"}, Schedule(every=6 * H)),
        ({"cron": "0 3 * * *"}, Schedule(cron="0 3 * * *")),
        (
            {"cron": "0 3 * * *", "timezone": "Europe/Paris"},
            Schedule(cron="0 3 * * *", timezone="Europe/Paris"),
        ),
        ({"every": "1h", "timezone": "Europe/Paris"}, Schedule(every=H)),  # no wall clock
        # deprecated: a plain number of seconds
        (3600, Schedule(every=H)),
        (0.25, Schedule(every=timedelta(seconds=0.25))),
    ],
)
def test_accepted_forms(value, expected):
    schedule = parse_schedule(value)
    assert schedule == expected
    assert schedule.plain_seconds is (isinstance(value, int | float))
    assert Schedule.parse(schedule.to_config()) == schedule  # what a config dump writes back


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("daily", "'daily' is neither an interval (6h, 90s, 1h30m, every 6h) nor a 5-field cron"),
        ("", "'' is neither an interval"),
        ("every", "'every' is neither an interval"),
        ("every minute", "'every minute' is neither an interval"),
        ("6 hours", "'6 hours' is neither an interval"),
        ("1y", "'1y' is neither an interval"),
        ("-1h", "'-1h' is neither an interval"),
        ("* * *", "'* * *' is neither an interval"),
        ("0 0 3 * * *", "'0 0 3 * * *' is neither an interval"),  # 6 fields (seconds)
        ("every 0 3 * * *", "is neither an interval"),
        ("3600", "'3600' is neither an interval (6h, 90s, 1h30m, every 6h) nor a 5-field cron"),
        ("3600", "seconds need a unit: 3600s"),
        ("0s", "interval '0s' must be above zero"),
        ("61 3 * * *", "'61 3 * * *' is not a valid cron line: Error validating expression '61'"),
        ("0 3 * * 8", "'0 3 * * 8' is not a valid cron line"),
        ("0 3 31 2 *", "'0 3 31 2 *' is not a valid cron line: it never fires"),
        (0, "0 is not a number of seconds above zero"),
        (-60, "-60 is not a number of seconds above zero"),
        (float("inf"), "inf is not a number of seconds above zero"),
        (True, "True is not a schedule"),
        ([60], "[60] is not a schedule"),
        ({"every": 5, "cron": "* * * * *"}, "give exactly one of every (an interval) or cron"),
        ({}, "give exactly one of every"),
        ({"timezone": "UTC"}, "give exactly one of every"),
        ({"evry": 5}, "unknown key 'evry' (a schedule has every, cron, timezone)"),
        ({"every": "soon"}, "'soon' is not a duration (like 90s, 15m, 12h, 30d, 2w, 1h30m)"),
        ({"cron": 5}, "cron 5 is not a cron line"),
        ({"cron": "0 3 * *"}, "'0 3 * *' is not a 5-field cron line"),
        ({"cron": "0 3 * * *", "timezone": "Mars/Base"}, "timezone 'Mars/Base' is not a time zone"),
        ({"cron": "0 3 * * *", "timezone": 2}, "timezone 2 is not a time zone name"),
        ({"every": "1h", "timezone": "Mars/Base"}, "timezone 'Mars/Base' is not a time zone"),
    ],
)
def test_refused_forms_say_what_is_wrong(value, problem):
    with pytest.raises(ValueError) as raised:
        parse_schedule(value)
    assert problem in str(raised.value)


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


def test_a_cron_line_in_a_local_time_zone_allows_an_hour_for_daylight_saving():
    schedule = parse_schedule({"cron": "30 2 * * *", "timezone": "Europe/Paris"})
    assert schedule.max_gap() == timedelta(hours=25)


def test_the_cron_schedule_fires_at_its_times():
    schedule = parse_schedule("15 3 * * *")
    trigger = schedule.trigger()
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    first = trigger.get_next_fire_time(None, now)
    assert first == datetime(2026, 6, 2, 3, 15, tzinfo=UTC)
    assert trigger.get_next_fire_time(first, first) == datetime(2026, 6, 3, 3, 15, tzinfo=UTC)
    assert schedule.next_after(now) == first
    assert schedule.next_after(first) == datetime(2026, 6, 3, 3, 15, tzinfo=UTC)  # strictly after


def test_a_time_zone_moves_the_cron_line():
    schedule = parse_schedule({"cron": "0 3 * * *", "timezone": "Europe/Paris"})
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert schedule.next_after(now) == datetime(2026, 6, 2, 1, 0, tzinfo=UTC)  # 03:00 CEST
    assert str(schedule) == "0 3 * * * (Europe/Paris)"


def test_the_interval_schedule_fires_every_interval():
    schedule = parse_schedule("6h")
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert schedule.next_after(start) == start + timedelta(hours=6)
    assert schedule.trigger().interval == timedelta(hours=6)


def test_triggers_are_interval_or_cron():
    assert isinstance(every(30).trigger(), IntervalTrigger)
    trigger = cron("30 2 * * *").trigger()
    assert isinstance(trigger, CronTrigger)
    assert str(trigger.fields[5]) == "2" and str(trigger.fields[6]) == "30"
    assert every(0.05).trigger().interval == timedelta(seconds=0.05)


def test_schedules_read_as_they_are_written():
    assert str(every("90m")) == "every 1h30m"
    assert str(cron("0 3 * * *")) == "0 3 * * *"
    assert every(3600).to_config() == "1h"
    assert cron("0 3 * * *", "Europe/Paris").to_config() == {
        "cron": "0 3 * * *",
        "timezone": "Europe/Paris",
    }


def test_a_schedule_is_a_frozen_value():
    schedule = every("6h")
    with pytest.raises(AttributeError):
        schedule.every = timedelta(hours=1)  # type: ignore[misc]
    assert {schedule, every(21600)} == {every("6h")}  # hashable; the written form is not kept


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(90, "1m30s"), (3600, "1h"), (86400, "1d"), (129600, "1d12h"), (0.5, "0.5s"), (0, "0s")],
)
def test_durations_format_as_they_parse(seconds, text):
    assert format_duration(timedelta(seconds=seconds)) == text
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 1e30, "99999999999w", True])
def test_durations_refuse_numbers_that_are_not_lengths_of_time(value):
    with pytest.raises(ValueError, match="is not a duration"):
        parse_duration(value)
