"""Periodic work on an APScheduler 3 BackgroundScheduler, schedules from config.yaml.

Features register a job by name with a default schedule; `schedules.<name>` in the
config overrides it (any form of agent/schedule.py's grammar, or null to turn the job off;
the lifecycle and snapshot jobs take theirs from their own section). A job never
overlaps itself (`max_instances=1`, missed runs coalesced), and a failing job is logged
and counted, never fatal: the scheduler keeps running it on its schedule.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from agent.schedule import Schedule, cron, every

__all__ = ["JobFunction", "JobRecord", "Jobs", "Schedule", "cron", "every"]

log = structlog.get_logger("agent.jobs")

JobFunction = Callable[[], object]


@dataclass
class JobRecord:
    """Running figures of one job, read by metrics and tests."""

    name: str
    schedule: Schedule
    runs: int = 0
    failures: int = 0
    last_duration: float | None = None
    last_error: str | None = None
    last_success_at: float | None = None


@dataclass
class _Job:
    function: JobFunction
    record: JobRecord
    lock: threading.Lock = field(default_factory=threading.Lock)


class Jobs:
    """A registry of named jobs on one BackgroundScheduler. `register` before `start`."""

    def __init__(
        self,
        schedules: Mapping[str, Schedule | None] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.schedules = dict(schedules or {})
        self.clock = clock
        self.wall_clock = wall_clock
        self._jobs: dict[str, _Job] = {}
        self._scheduler: Any = None

    def register(self, name: str, function: JobFunction, default: Schedule) -> JobRecord | None:
        """Add job `name`; returns its record, or None when the config turned it off."""
        if name in self._jobs:
            raise ValueError(f"job {name!r} is already registered")
        if name in self.schedules and self.schedules[name] is None:
            log.info("job.disabled", job=name)
            return None
        schedule = self.schedules.get(name) or default
        record = JobRecord(name, schedule)
        self._jobs[name] = _Job(function, record)
        if self._scheduler is not None:
            self._add(name)
        return record

    def records(self) -> list[JobRecord]:
        return [job.record for job in self._jobs.values()]

    def record(self, name: str) -> JobRecord:
        return self._jobs[name].record

    def start(self) -> None:
        unknown = sorted(set(self.schedules) - set(self._jobs))
        for name in unknown:
            if self.schedules[name] is not None:
                log.warning("job.unknown_schedule", job=name, known=sorted(self._jobs))
        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": 60},
        )
        for name in self._jobs:
            self._add(name)
        self._scheduler.start()
        schedules = {name: str(job.record.schedule) for name, job in self._jobs.items()}
        log.info("job.scheduler_started", jobs=schedules)

    def stop(self, wait: bool = True) -> None:
        """Stop scheduling; with `wait`, let running jobs finish. Idempotent."""
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        self._scheduler = None

    def run_now(self, name: str) -> bool:
        """Run a job in the caller's thread (tests, shutdown flush); False if it failed."""
        return self._run(name)

    def _add(self, name: str) -> None:
        job = self._jobs[name]
        self._scheduler.add_job(
            self._run,
            trigger=job.record.schedule.trigger(),
            args=[name],
            id=name,
            name=name,
            replace_existing=True,
        )

    def _run(self, name: str) -> bool:
        job = self._jobs[name]
        record = job.record
        if not job.lock.acquire(blocking=False):
            log.debug("job.skipped_running", job=name)  # run_now racing the scheduler
            return True
        started = self.clock()
        try:
            job.function()
        except Exception as exc:  # a job's failure must never stop the agent
            record.failures += 1
            record.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("job.failed", job=name, failures=record.failures)
            return False
        else:
            record.last_success_at = self.wall_clock()
            return True
        finally:
            record.runs += 1
            record.last_duration = self.clock() - started
            job.lock.release()
