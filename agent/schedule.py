"""The one grammar for time in config.yaml: how long (`Duration`) and when (`Schedule`).

Durations: ``90s``, ``15m``, ``12h``, ``30d``, ``2w``, ``1h30m`` (units s m h d w, summed),
or a number of seconds. `parse_duration` is the only duration parser in the agent.

Schedules, the same for every ``*.schedule`` key and ``schedules.<job>``:

* an interval: ``6h``, ``90s``, ``1h30m``, ``every 6h``;
* a 5-field cron line, in UTC: ``"0 3 * * *"``;
* a mapping: ``{every: 6h}``, or ``{cron: "0 3 * * *", timezone: Europe/Paris}`` (the only
  way to give a cron line another time zone);
* a plain number of seconds (``3600``): deprecated, still accepted. The value remembers it
  (`Schedule.plain_seconds`) so that config loading can warn naming the key.

`Schedule` is a frozen value: `trigger()` is what the job scheduler registers, `next_after()`
when it fires next, `max_gap()` the longest wait between two runs (what the snapshot-age
alarm allows). It validates itself as a pydantic field type; `at_least()` adds a minimum
interval for one key. This module is core: it imports nothing from the agent.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import AfterValidator, BeforeValidator, GetCoreSchemaHandler, PlainSerializer
from pydantic_core import core_schema

# -- durations ----------------------------------------------------------------------------

_DURATION = re.compile(r"\s*(?:\d+(?:\.\d+)?\s*[smhdw]\s*)+", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORMAT_UNITS = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
DURATION_EXAMPLES = "90s, 15m, 12h, 30d, 2w, 1h30m"
MAX_DURATION = timedelta(days=36_500)
"""No length of time in the agent is longer (100 years): now + it is always a valid date."""


def parse_duration(value: Any) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w``, ``1h30m``, or a number of seconds (>= 0),
    at most MAX_DURATION."""
    if isinstance(value, timedelta):
        parsed: timedelta | None = value
    else:
        parsed = None
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value) and value >= 0:
                    parsed = timedelta(seconds=value)
            elif isinstance(value, str) and len(value) <= 100 and _DURATION.fullmatch(value):
                parts = _DURATION_PART.findall(value)
                seconds = sum(float(n) * _DURATION_UNITS[u.lower()] for n, u in parts)
                parsed = timedelta(seconds=seconds)
        except (ValueError, OverflowError):
            parsed = None
    if parsed is None:
        raise ValueError(f"{reprlib.repr(value)} is not a duration (like {DURATION_EXAMPLES})")
    if parsed > MAX_DURATION:
        raise ValueError(f"{format_duration(parsed)!r} is longer than 100 years")
    return parsed


def format_duration(value: timedelta) -> str:
    """The inverse of parse_duration: ``1d12h``, ``1m30s``, ``0.5s``; a dump reads back the same."""
    seconds = value.total_seconds()
    if seconds != int(seconds) or seconds <= 0:
        return f"{seconds:g}s"
    rest = int(seconds)
    parts = []
    for unit, size in _FORMAT_UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def duration_seconds(text: str) -> int:
    """A positive whole number of seconds from ``90s``, ``30m``, ``1h``, ``7d`` or ``45``."""
    text = text.strip()
    seconds = float(text) if text.isdigit() else parse_duration(text).total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"{text!r} is not a duration of whole seconds above zero (90s, 1h, 7d)")
    return int(seconds)


def within(
    minimum: timedelta | None = None,
    maximum: timedelta | None = None,
    *,
    above_zero: bool = False,
    whole_seconds: bool = False,
) -> AfterValidator:
    """Bounds for one Duration key: ``Annotated[Duration, within(maximum=timedelta(days=7))]``."""

    def check(value: timedelta) -> timedelta:
        shown = repr(format_duration(value))
        if above_zero and value <= timedelta(0):
            raise ValueError(f"{shown} must be longer than zero")
        if minimum is not None and value < minimum:
            raise ValueError(f"{shown} is shorter than {format_duration(minimum)}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{shown} is longer than {format_duration(maximum)}")
        if whole_seconds and value.total_seconds() != int(value.total_seconds()):
            raise ValueError(f"{shown} is not a whole number of seconds")
        return value

    return AfterValidator(check)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]
"""A config key holding a length of time; dumped back as text (``1d12h``)."""


# -- schedules ----------------------------------------------------------------------------

_INTERVAL = re.compile(r"(?:every\s+)?(\S.*)", re.IGNORECASE | re.DOTALL)
_MAPPING_KEYS = ("every", "cron", "timezone")
_KINDS = ("an interval (6h, 90s, 1h30m, every 6h)", "a 5-field cron line (0 3 * * *)")
SCHEDULE_EXAMPLES = " or ".join(_KINDS)
# A cron schedule's longest gap is measured over this window (covers weekly and monthly).
_GAP_WINDOW = timedelta(days=62)
# Daylight-saving shifts move a cron line in a local time zone by up to an hour.
_DST_SLACK = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a job runs: `every` interval, or a `cron` line in `timezone` (UTC by default).

    Build one with `Schedule.parse(value)` (any config form), `every("6h")` or `cron("0 3 * * *")`.
    """

    every: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"
    plain_seconds: bool = field(default=False, compare=False, repr=False)
    """Written as a bare number of seconds: the deprecated form config loading warns about."""

    def __post_init__(self) -> None:
        if (self.every is None) == (self.cron is None):
            raise ValueError("give exactly one of every (an interval) or cron (a cron line)")
        if self.every is not None:
            if self.every <= timedelta(0):
                raise ValueError(f"interval {format_duration(self.every)!r} must be above zero")
            if self.timezone != "UTC":  # checked, then dropped: an interval has no wall clock
                _zone(self.timezone)
                object.__setattr__(self, "timezone", "UTC")
            return
        assert self.cron is not None
        if len(self.cron.split()) != 5:
            raise ValueError(f"{self.cron!r} is not a 5-field cron line (like 0 3 * * *)")
        zone = _zone(self.timezone)
        try:
            trigger = CronTrigger.from_crontab(self.cron, timezone=zone)
        except ValueError as exc:
            raise ValueError(f"{self.cron!r} is not a valid cron line: {exc}") from None
        if trigger.get_next_fire_time(None, datetime(2024, 1, 1, tzinfo=UTC)) is None:
            raise ValueError(f"{self.cron!r} is not a valid cron line: it never fires")

    @classmethod
    def parse(cls, value: Any) -> Schedule:
        """Any config form (text, mapping, number of seconds); ValueError says what is wrong."""
        if isinstance(value, Schedule):
            return value
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a schedule: give {SCHEDULE_EXAMPLES}")
        if isinstance(value, int | float):
            if not 0 < value < math.inf:
                raise ValueError(f"{value!r} is not a number of seconds above zero")
            return cls(every=parse_duration(value), plain_seconds=True)
        if isinstance(value, str):
            return cls._parse_text(value)
        if isinstance(value, Mapping):
            return cls._parse_mapping(value)
        raise ValueError(f"{value!r} is not a schedule: give {SCHEDULE_EXAMPLES}")

    @classmethod
    def _parse_text(cls, text: str) -> Schedule:
        stripped = " ".join(text.split())
        match = _INTERVAL.fullmatch(stripped)
        if match and _DURATION.fullmatch(match.group(1)):
            return cls(every=parse_duration(match.group(1)))
        if len(stripped.split()) == 5 and not stripped.lower().startswith("every"):
            return cls(cron=stripped)
        hint = f"; seconds need a unit: {stripped}s" if stripped.isdigit() else ""
        raise ValueError(f"{text!r} is neither {_KINDS[0]} nor {_KINDS[1]}{hint}")

    @classmethod
    def _parse_mapping(cls, value: Mapping[Any, Any]) -> Schedule:
        unknown = sorted(str(key) for key in value if key not in _MAPPING_KEYS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (a schedule has every, cron, timezone)")
        timezone = value.get("timezone", "UTC")
        if not isinstance(timezone, str):
            raise ValueError(f"timezone {timezone!r} is not a time zone name (like Europe/Paris)")
        every, line = value.get("every"), value.get("cron")
        if (every is None) == (line is None):
            raise ValueError("give exactly one of every (an interval) or cron (a cron line)")
        if every is not None:
            return cls(every=parse_duration(every), timezone=timezone)
        if not isinstance(line, str):
            raise ValueError(f"cron {line!r} is not a cron line (like 0 3 * * *)")
        return cls(cron=" ".join(line.split()), timezone=timezone)

    def trigger(self) -> IntervalTrigger | CronTrigger:
        """An APScheduler trigger for this schedule."""
        if self.every is not None:
            return IntervalTrigger(seconds=self.every.total_seconds(), timezone=UTC)
        assert self.cron is not None
        return CronTrigger.from_crontab(self.cron, timezone=_zone(self.timezone))

    def next_after(self, moment: datetime) -> datetime:
        """When it fires next, strictly after `moment` (an interval counts from `moment`)."""
        if self.every is not None:
            return moment + self.every
        fire: datetime = self.trigger().get_next_fire_time(None, moment + timedelta(microseconds=1))
        return fire.astimezone(moment.tzinfo)

    def max_gap(self) -> timedelta:
        """The longest time between two consecutive runs (plus an hour for DST in local time)."""
        if self.every is not None:
            return self.every
        trigger = self.trigger()
        start = datetime(2024, 1, 1, tzinfo=UTC)  # a leap year, Monday
        previous: datetime | None = trigger.get_next_fire_time(None, start)
        widest = timedelta(0)
        while previous is not None and previous < start + _GAP_WINDOW:
            following: datetime | None = trigger.get_next_fire_time(previous, previous)
            if following is None:
                break
            widest = max(widest, following.astimezone(UTC) - previous.astimezone(UTC))
            previous = following
        return widest if self.timezone == "UTC" else widest + _DST_SLACK

    def to_config(self) -> str | dict[str, str]:
        """The value as config.yaml writes it; `Schedule.parse` reads it back equal."""
        if self.every is not None:
            return format_duration(self.every)
        assert self.cron is not None
        if self.timezone == "UTC":
            return self.cron
        return {"cron": self.cron, "timezone": self.timezone}

    def __str__(self) -> str:
        if self.every is not None:
            return f"every {format_duration(self.every)}"
        return f"{self.cron}" if self.timezone == "UTC" else f"{self.cron} ({self.timezone})"

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(
                cls.to_config, when_used="always"
            ),
            json_schema_input_schema=core_schema.union_schema(
                [core_schema.str_schema(), core_schema.float_schema(), core_schema.dict_schema()]
            ),
        )


def every(interval: float | str | timedelta) -> Schedule:
    """An interval schedule: ``every(60)``, ``every("6h")``, ``every(timedelta(hours=6))``."""
    return Schedule(every=parse_duration(interval))


def cron(line: str, timezone: str = "UTC") -> Schedule:
    """A cron schedule: ``cron("0 3 * * *")``."""
    return Schedule(cron=line, timezone=timezone)


def parse_schedule(value: Any) -> Schedule:
    """`Schedule.parse`: any config form to a Schedule, or ValueError naming the problem."""
    return Schedule.parse(value)


def at_least(minimum: timedelta) -> AfterValidator:
    """A minimum interval for one key: ``Annotated[Schedule, at_least(timedelta(minutes=5))]``.

    Cron lines are not measured (their gaps vary); intervals shorter than `minimum` are refused.
    """

    def check(schedule: Schedule) -> Schedule:
        if schedule.every is not None and schedule.every < minimum:
            raise ValueError(
                f"interval {format_duration(schedule.every)!r} is shorter than"
                f" {format_duration(minimum)}, the least this key allows"
            )
        return schedule

    return AfterValidator(check)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r} is not a time zone name (like Europe/Paris)") from None
