"""`Auditor`: what a process records through — its trail, its actor (asked once), its clock.

An action's record is written after the action, from its report; an action that raised
is recorded as failed and the exception goes on. Writing the record never breaks the
action that already happened: a failure to record is logged as an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

import structlog

from agent.audit import actions
from agent.audit.records import Actor, AuditRecord
from agent.audit.trail import AuditTrail

log = structlog.get_logger("agent.audit")

R = TypeVar("R")
Build = Callable[[Actor, datetime], AuditRecord]


class Auditor:
    def __init__(
        self,
        trail: AuditTrail,
        who: Callable[[], Actor],
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.trail = trail
        self._who = who
        self._actor: Actor | None = None
        self.clock = clock or (lambda: datetime.now(UTC))

    def who(self) -> Actor:
        """Asked once per process (an STS call for AWS commands), then kept."""
        if self._actor is None:
            self._actor = self._who()
        return self._actor

    def record(self, build: Build) -> AuditRecord | None:
        try:
            record = build(self.who(), self.clock())
            self.trail.record(record)
        except Exception:
            log.exception("audit.record_failed")
            return None
        return record

    def around(
        self,
        action: str,
        run: Callable[[], R],
        build: Callable[[R, Actor, datetime], AuditRecord],
        *,
        target: str | None = None,
        prefix: str | None = None,
        keys: Sequence[str] = (),
        versions: Sequence[str] = (),
    ) -> R:
        """Run `run`; record its result with `build`, or its failure (with what it was
        asked to touch: `target`, `prefix`, `keys`, `versions`); return the result."""
        try:
            result = run()
        except BaseException as exc:
            error = exc
            self.record(
                lambda who, at: actions.failed(
                    action,
                    who,
                    at,
                    error,
                    target=target,
                    prefix=prefix,
                    keys=keys,
                    versions=versions,
                )
            )
            raise
        self.record(lambda who, at: build(result, who, at))
        return result
