"""The fleet seen from the table: every member, its figures, and who needs a person.

Health: ``ok`` when every member beats; ``degraded`` when a member is paused or an item
does not parse; ``down`` when a member's heartbeat is missing (older than
`STALE_INTERVALS` of its own interval) or no member is registered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agent.fleet.member import PAUSED, STALE_INTERVALS, STOPPED, Member

OK, DEGRADED, DOWN = "ok", "degraded", "down"


@dataclass
class FleetReport:
    health: str = OK
    members: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    groups: dict[str, int] | None = None  # replica group -> members beating (replicas > 1)

    def to_dict(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "health": self.health,
            "members": self.members,
            "problems": self.problems,
        }
        if self.groups is not None:
            found["replica_groups"] = self.groups
        return found

    def flag_groups(self, by_group: dict[str, list[Member]], now: datetime) -> None:
        """With replicas: a group none of whose members beats copies nothing, so every new
        version stays on fewer volumes than asked: down."""
        self.groups = {}
        group_of = {m.member_id: group for group, members in by_group.items() for m in members}
        for entry in self.members:
            entry["replica_group"] = group_of.get(entry["member_id"])
        for group, members in by_group.items():
            beating = [m for m in members if m.state != STOPPED and not m.missing(now)]
            self.groups[group] = len(beating)
            if not beating:
                self._flag(
                    DOWN,
                    f"replica group {group}: no member with a heartbeat; new versions are held"
                    " by fewer volumes than fleet.replicas asks",
                )

    def _flag(self, health: str, problem: str) -> None:
        self.problems.append(problem)
        if health == DOWN or self.health == OK:
            self.health = health


def fleet_report(members: list[Member], bad_items: list[str], now: datetime) -> FleetReport:
    report = FleetReport()
    if not members:
        report._flag(DOWN, "fleet: no member has registered on this queue")
    for member in members:
        entry = member.to_dict()
        entry["heartbeat_age_seconds"] = round(member.heartbeat_age(now), 1)
        entry["missing"] = member.missing(now)
        report.members.append(entry)
        if entry["missing"]:
            report._flag(
                DOWN,
                f"{member.member_id}: heartbeat missing (last {member.heartbeat.isoformat()},"
                f" more than {STALE_INTERVALS} x {member.interval_seconds:g}s ago)",
            )
        elif member.state == PAUSED:
            report._flag(
                DEGRADED, f"{member.member_id}: paused: {member.paused_reason or 'no reason'}"
            )
    for problem in bad_items:
        report._flag(DEGRADED, problem)
    return report
