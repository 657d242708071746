"""What the lifecycle jobs (reconcile, retention, gc, scrub) share.

* `StateFile`: a small JSON document under ``state/`` on the backup volume (cursors,
  checkpoints), replaced atomically so a crash leaves the old or the new one.
* `job_lock`: one run of a job at a time on a volume, across processes (``flock``);
  each run's outcome is kept in ``state/last-<job>.json`` (`last_run`, read by `status`).
* `Pacer`: paces work to N operations per second with an injected clock.
* `LifecycleContext`: volume, journal, ledger and backup service wired from config
  (what the CLI commands and the scheduler hand to the jobs).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from agent.aws import Clients
from agent.config import Config
from agent.errors import BackupAgentError
from agent.pipeline.backup import BackupService
from agent.stats import Stats
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume, atomic_write_bytes

log = structlog.get_logger("agent.lifecycle")

STATE_DIR = "state"
AGENT_STATE_NAME = "agent.json"  # the daemon's own state (agent/runtime/agent_state.py)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class JobBusy(BackupAgentError):
    """Another run of the same job holds the volume's lock."""


class StateFile:
    """A JSON document on the volume, written with temp + fsync + rename."""

    def __init__(self, volume: Volume, name: str) -> None:
        self.path = volume.root / STATE_DIR / name

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # unreadable: start over rather than crash-loop
        return data if isinstance(data, dict) else None

    def save(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(data, indent=1, ensure_ascii=False).encode())


LAST_RUN_JOBS = ("reconcile", "retention", "gc", "scrub")


@contextlib.contextmanager
def job_lock(volume: Volume, job: str, *, record: bool = True) -> Iterator[None]:
    """Hold ``state/<job>.lock``; raise JobBusy if another process runs the job.

    The volume is checked first: an unmounted volume's bare mount point is never written.
    With `record`, the run's outcome (ok, or the error that ended it) is saved for `status`.
    """
    volume.ensure_ready()
    directory = volume.root / STATE_DIR
    directory.mkdir(exist_ok=True)
    fd = os.open(directory / f"{job}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JobBusy(f"another {job} run is in progress on {volume.root}") from None
        started = utc_now()
        try:
            yield
        except BaseException as exc:
            if record:
                _record_run(volume, job, started, f"failed: {type(exc).__name__}: {exc}")
            raise
        if record:
            _record_run(volume, job, started, "ok")
    finally:
        os.close(fd)  # closing releases the lock


def _record_run(volume: Volume, job: str, started: datetime, outcome: str) -> None:
    entry = {"job": job, "started_at": started.isoformat(), "outcome": outcome[:500]}
    entry["finished_at"] = utc_now().isoformat()
    try:
        StateFile(volume, f"last-{job}.json").save(entry)
    except OSError as exc:  # the run's own outcome matters more than its record
        log.warning("job.record_failed", job=job, error=str(exc))


def last_run(volume: Volume, job: str) -> dict[str, Any] | None:
    """The last recorded run of `job` (started_at, finished_at, outcome), or None."""
    return StateFile(volume, f"last-{job}.json").load()


def run_exclusive(volume: Volume, job: str, run: Callable[[], object]) -> Callable[[], None]:
    """`run` under `job_lock`, skipped (logged, not failed) while another process runs it.

    For the daemon's scheduled runs, so they and `backup-agent JOB` never overlap.
    """

    def locked() -> None:
        try:
            with job_lock(volume, job):
                run()
        except JobBusy as busy:
            log.info("job.skipped_busy", job=job, reason=str(busy))

    return locked


class Pacer:
    """At most `rate` acquisitions per second, evenly spaced (no bursts)."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next = 0.0

    def acquire(self) -> float:
        """Wait for the next slot; return the seconds waited."""
        now = self.clock()
        start = max(self._next, now)
        self._next = start + self.interval
        wait = start - now
        if wait > 0:
            self.sleep(wait)
        return wait


@dataclass
class LifecycleContext:
    config: Config
    clients: Clients
    volume: Volume
    volume_id: str
    journal: Journal
    ledger: Ledger
    service: BackupService
    stats: Stats
