"""The member's heartbeat: a scheduler job that rewrites its item every interval.

`beat()` is the job; `leave()` writes the last one, `stopped`, so `status --fleet` tells a
member shut down on purpose from one whose heartbeat stopped (killed, lost instance).
The figures (paused, disk used, lag) come from a callable the daemon passes in.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from agent.fleet.member import ACTIVE, PAUSED, STOPPED, Member
from agent.fleet.registry import Registry

log = structlog.get_logger("agent.fleet")


@dataclass(frozen=True, slots=True)
class Figures:
    paused_reason: str | None = None
    disk_used_ratio: float | None = None
    lag_seconds: float | None = None
    backed_up: int = 0


@dataclass(frozen=True, slots=True)
class Identity:
    member_id: str
    instance_id: str | None
    volume_id: str
    availability_zone: str | None
    version: str


class Heartbeat:
    def __init__(
        self,
        registry: Registry,
        identity: Callable[[], Identity],
        *,
        interval_seconds: float,
        clock: Callable[[], datetime],
        figures: Callable[[], Figures] = Figures,
    ) -> None:
        self.registry = registry
        self._identify = identity  # resolved at the first beat (IMDS, off the start path)
        self._identity: Identity | None = None
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.figures = figures
        self.started = clock()
        self.last: Member | None = None
        self._lock = threading.Lock()
        self._left = False

    @property
    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self._identify()
        return self._identity

    def member(self, *, stopped: bool = False) -> Member:
        figures = self.figures()
        state = STOPPED if stopped else (PAUSED if figures.paused_reason else ACTIVE)
        return Member(
            member_id=self.identity.member_id,
            instance_id=self.identity.instance_id,
            volume_id=self.identity.volume_id,
            availability_zone=self.identity.availability_zone,
            version=self.identity.version,
            started=self.started,
            heartbeat=self.clock(),
            interval_seconds=self.interval_seconds,
            state=state,
            paused_reason=figures.paused_reason,
            disk_used_ratio=figures.disk_used_ratio,
            lag_seconds=figures.lag_seconds,
            backed_up=figures.backed_up,
        )

    def beat(self) -> None:
        with self._lock:  # never a beat after leave(): its `active` would outlive the stop
            if self._left:
                return
            member = self.member()
            self.registry.announce(member)
        if self.last is None:
            log.info("fleet.joined", member=member.member_id, volume_id=member.volume_id)
        self.last = member

    def missing_members(self) -> int:
        """How many members of the fleet (this one aside) have a missing heartbeat."""
        now = self.clock()
        members, _ = self.registry.members()
        return sum(1 for m in members if m.member_id != self.identity.member_id and m.missing(now))

    def leave(self) -> None:
        """The last heartbeat, `stopped`; never raises (the agent is stopping anyway)."""
        try:
            with self._lock:
                self._left = True
                member = self.member(stopped=True)
                self.registry.announce(member)
            self.last = replace(member)
            log.info("fleet.left", member=member.member_id)
        except Exception:
            log.exception("fleet.leave_failed")
