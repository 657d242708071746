"""One member of the fleet: an agent, the volume it writes to, and its last heartbeat.

Stored in the ledger's table, in a partition of its own (`fleet_pk`): ``pk = "fleet#<queue
name>"``, ``sk = "member#<member id>"``. A bucket name cannot hold ``#``, so the partition
never meets an object's (``<bucket>/<key>``). Items are read back validated: a member
item that does not parse is reported as such, never a crash.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

FLEET_PREFIX = "fleet#"
MEMBER_PREFIX = "member#"
ADOPTED_PREFIX = "adopted#"  # sk of "volume X is served by member Y" (agent/fleet/adopt.py)
STALE_INTERVALS = 3  # a heartbeat older than this many intervals: the member is flagged

# Each member publishes how many members' heartbeats are missing, fleet-wide (dimension
# Fleet=<queue name>); the "heartbeat missing" alarm (agent/operations/alarms.py) fires
# above 0, and when no member publishes at all.
MISSING_METRIC = "FleetMembersMissing"
FLEET_DIMENSION = "Fleet"

ACTIVE, PAUSED, STOPPED = "active", "paused", "stopped"
STATES = (ACTIVE, PAUSED, STOPPED)


def fleet_pk(queue_name: str) -> str:
    return FLEET_PREFIX + queue_name


class BadMember(ValueError):
    """A member item read back from the table that is not one."""


@dataclass(frozen=True, slots=True)
class Member:
    member_id: str  # the EC2 instance id; off EC2, "<hostname>/<volume id>"
    instance_id: str | None
    volume_id: str
    availability_zone: str | None
    version: str
    started: datetime
    heartbeat: datetime
    interval_seconds: float
    state: str = ACTIVE
    paused_reason: str | None = None
    disk_used_ratio: float | None = None
    lag_seconds: float | None = None
    backed_up: int = 0

    def heartbeat_age(self, now: datetime) -> float:
        return (now - self.heartbeat).total_seconds()

    def missing(self, now: datetime) -> bool:
        """Has the heartbeat stopped? A member that stopped cleanly said so; it is not."""
        if self.state == STOPPED:
            return False
        limit = timedelta(seconds=STALE_INTERVALS * self.interval_seconds)
        return now - self.heartbeat > limit

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["started"] = self.started.isoformat()
        values["heartbeat"] = self.heartbeat.isoformat()
        return {k: v for k, v in values.items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Member:
        """A member from an item's values (untrusted: raises BadMember)."""
        try:
            return cls(
                member_id=_text(data, "member_id"),
                instance_id=_optional_text(data, "instance_id"),
                volume_id=_text(data, "volume_id"),
                availability_zone=_optional_text(data, "availability_zone"),
                version=_text(data, "version"),
                started=_time(data, "started"),
                heartbeat=_time(data, "heartbeat"),
                interval_seconds=_number(data, "interval_seconds", positive=True),
                state=_state(data),
                paused_reason=_optional_text(data, "paused_reason"),
                disk_used_ratio=_optional_number(data, "disk_used_ratio"),
                lag_seconds=_optional_number(data, "lag_seconds"),
                backed_up=int(_number(data, "backed_up")) if "backed_up" in data else 0,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BadMember(f"member item {data.get('member_id')!r}: {exc}") from exc


def _text(data: dict[str, Any], name: str) -> str:
    value = data[name]
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError(f"{name} is not a short string")
    return value


def _optional_text(data: dict[str, Any], name: str) -> str | None:
    return _text(data, name) if data.get(name) is not None else None


def _time(data: dict[str, Any], name: str) -> datetime:
    parsed = datetime.fromisoformat(_text(data, name))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(data: dict[str, Any], name: str, *, positive: bool = False) -> float:
    value = data[name]
    if isinstance(value, bool):
        raise ValueError(f"{name} is not a number")
    number = float(value)  # DynamoDB numbers come back as Decimal
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError(f"{name} is out of range")
    return number


def _optional_number(data: dict[str, Any], name: str) -> float | None:
    return _number(data, name) if data.get(name) is not None else None


def _state(data: dict[str, Any]) -> str:
    state = data.get("state", ACTIVE)
    if state not in STATES:
        raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
    return str(state)
