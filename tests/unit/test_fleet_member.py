"""Fleet members: the item round trip, a missing heartbeat, the report, the heartbeat job."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from agent.fleet.heartbeat import Figures, Heartbeat, Identity
from agent.fleet.member import ACTIVE, PAUSED, STOPPED, BadMember, Member
from agent.fleet.report import DEGRADED, DOWN, OK, fleet_report
from tests.support.clock import FakeClock

NO_FIGURES = Figures()
IDENTITY = Identity("i-1", "i-1", "vol-1", "us-east-1a", "9.9")


class FakeRegistry:
    def __init__(self) -> None:
        self.written: list[Member] = []

    def announce(self, member: Member) -> None:
        self.written.append(member)

    def members(self) -> tuple[list[Member], list[str]]:
        latest = {m.member_id: m for m in self.written}
        return list(latest.values()), []


def _heartbeat(clock: FakeClock, figures: Figures = NO_FIGURES) -> tuple[Heartbeat, FakeRegistry]:
    registry = FakeRegistry()
    beat = Heartbeat(
        registry,  # type: ignore[arg-type]
        lambda: IDENTITY,
        interval_seconds=30,
        clock=clock,
        figures=lambda: figures,
    )
    return beat, registry


def test_a_member_is_missing_after_three_intervals_without_a_heartbeat() -> None:
    clock = FakeClock()
    beat, registry = _heartbeat(clock)
    beat.beat()
    member = registry.written[-1]
    clock.advance(seconds=90)
    assert not member.missing(clock())  # exactly three intervals: not yet
    clock.advance(seconds=1)
    assert member.missing(clock())
    beat.beat()
    assert not registry.written[-1].missing(clock())


def test_a_member_that_left_is_not_missing() -> None:
    clock = FakeClock()
    beat, registry = _heartbeat(clock)
    beat.beat()
    beat.leave()
    clock.advance(hours=5)
    assert registry.written[-1].state == STOPPED
    assert not registry.written[-1].missing(clock())


def test_the_figures_say_paused_and_round_trip_through_an_item() -> None:
    clock = FakeClock()
    beat, registry = _heartbeat(
        clock, Figures(paused_reason="volume 95% full", disk_used_ratio=0.95, lag_seconds=2.5)
    )
    beat.beat()
    member = registry.written[-1]
    assert member.state == PAUSED and member.started == clock()
    assert Member.from_dict(member.to_dict()) == member


@pytest.mark.parametrize(
    "change",
    [
        {"heartbeat": "yesterday"},
        {"interval_seconds": 0},
        {"interval_seconds": float("nan")},
        {"state": "dancing"},
        {"volume_id": 7},
        {"disk_used_ratio": True},
    ],
)
def test_an_item_that_is_not_a_member_is_refused_by_name(change: dict[str, object]) -> None:
    clock = FakeClock()
    beat, registry = _heartbeat(clock)
    beat.beat()
    item = registry.written[-1].to_dict() | change
    with pytest.raises(BadMember, match="i-1"):
        Member.from_dict(item)


def test_the_report_flags_a_missing_heartbeat_down_and_a_pause_degraded() -> None:
    clock = FakeClock()
    live = _member(clock, "i-live", ACTIVE)
    paused = _member(clock, "i-paused", PAUSED)
    clock.advance(seconds=60)
    late = _member(clock, "i-late", ACTIVE)
    clock.advance(seconds=40)  # i-live and i-paused: 100 s since their beat (3 x 30 s)

    assert fleet_report([late], [], clock()).health == OK
    report = fleet_report([late, paused], [], clock())
    assert report.health == DOWN  # paused, and its heartbeat stopped too
    report = fleet_report([late, live], ["member item 'x': bad"], clock())
    assert report.health == DOWN
    assert [m["missing"] for m in report.members] == [False, True]
    assert any("i-live: heartbeat missing" in p for p in report.problems)
    clock_now = late.heartbeat + timedelta(seconds=10)
    assert fleet_report([late, _paused_at(late)], [], clock_now).health == DEGRADED
    assert fleet_report([], [], clock()).health == DOWN


def _member(clock: FakeClock, member_id: str, state: str) -> Member:
    return Member(
        member_id=member_id,
        instance_id=member_id,
        volume_id="vol-" + member_id,
        availability_zone=None,
        version="9.9",
        started=clock(),
        heartbeat=clock(),
        interval_seconds=30,
        state=state,
    )


def _paused_at(member: Member) -> Member:
    return dataclasses.replace(
        member, member_id="i-p", state=PAUSED, paused_reason="volume 95% full"
    )


def test_the_survivors_count_the_members_whose_heartbeat_is_missing() -> None:
    clock = FakeClock()
    beat, registry = _heartbeat(clock)
    registry.announce(_member(clock, "i-gone", ACTIVE))
    registry.announce(_member(clock, "i-left", STOPPED))
    beat.beat()
    assert beat.missing_members() == 0
    clock.advance(seconds=100)
    beat.beat()  # this member beats on; i-gone stopped at 100 s, i-left said it left
    assert beat.missing_members() == 1


def test_no_heartbeat_follows_leaving() -> None:
    clock = FakeClock()
    beat, registry = _heartbeat(clock)
    beat.beat()
    beat.leave()
    clock.advance(seconds=30)
    beat.beat()  # a scheduled run that raced the stop
    assert [m.state for m in registry.written] == [ACTIVE, STOPPED]
