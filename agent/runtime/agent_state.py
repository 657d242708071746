"""`state/agent.json` on the backup volume: what the running agent publishes for `status`.

Written (atomically) at start, on every status tick and at stop, so `backup-agent status`
can tell running from stopped and show the figures without systemd or the journal: pid,
version, start time, last successful backup and its lag, in-flight messages, failures in
the last hour, and whether the agent is paused (and why) when the daemon says so.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog

from agent import __version__
from agent.lifecycle.context import AGENT_STATE_NAME, StateFile
from agent.stats import Stats
from agent.storage.volume import Volume

log = structlog.get_logger("agent.runtime")

HOUR = 3600.0
TICK_SECONDS = 15.0  # how often the main loop's ticks rewrite the file


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat()


class AgentState:
    """Publishes the daemon's state; never raises (a full disk must not stop the agent)."""

    def __init__(
        self,
        volume: Volume,
        stats: Stats,
        *,
        paused: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.volume = volume
        self.file = StateFile(volume, AGENT_STATE_NAME)
        self.stats = stats
        self.paused = paused
        self.clock = clock
        # (time, failures so far), from when the agent (and its Stats) began
        self._failures: deque[tuple[float, int]] = deque([(clock(), 0)])
        self._published: float | None = None

    def document(self, *, stopped: bool = False) -> dict[str, Any]:
        now = self.clock()
        figures = self.stats.snapshot()
        self._failures.append((now, figures.backups_failed))
        while len(self._failures) > 1 and self._failures[1][0] <= now - HOUR:
            self._failures.popleft()  # keep one sample at or before the hour's start
        reason = self.paused() if self.paused is not None else None
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started": _iso(figures.started_at),
            "updated": _iso(now),
            "stopped": _iso(now) if stopped else None,
            "last_success": _iso(figures.last_success_at),
            "last_lag_seconds": figures.last_lag_seconds,
            "in_flight": figures.messages_in_flight,
            "backed_up": figures.backups_succeeded,
            "failed": figures.backups_failed,
            "failures_last_hour": figures.backups_failed - self._failures[0][1],
            "paused": reason is not None,
            "paused_reason": reason,
        }

    def tick(self) -> None:
        """Publish unless the file was written less than TICK_SECONDS ago."""
        if self._published is None or self.clock() - self._published >= TICK_SECONDS:
            self.publish()

    def publish(self, *, stopped: bool = False) -> None:
        self._published = self.clock()
        try:
            self.volume.ensure_ready()  # never onto the bare mount point of a lost volume
            self.file.save(self.document(stopped=stopped))
        except Exception as exc:  # noqa: BLE001 - status is best effort, backups are not
            log.warning("agent_state.write_failed", error=str(exc))
