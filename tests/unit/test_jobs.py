"""Scheduled jobs: schedules from config, failures counted and never fatal."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from structlog.testing import capture_logs

from agent.schedule import Schedule, cron, every
from agent.scheduler import Jobs
from tests.support.waiting import wait_until


def test_a_failing_job_is_counted_and_the_scheduler_keeps_running_it():
    jobs = Jobs()
    ran = []

    def broken() -> None:
        raise RuntimeError("disk check exploded")

    failures = jobs.register("broken", broken, every(0.05))
    healthy = jobs.register("healthy", lambda: ran.append(1), every(0.05))
    with capture_logs() as logs:
        jobs.start()
        try:
            wait_until(lambda: failures.failures >= 3 and healthy.runs >= 3, timeout=10)
        finally:
            jobs.stop()
    assert failures.last_error == "RuntimeError: disk check exploded"
    assert failures.runs == failures.failures
    assert healthy.failures == 0 and len(ran) == healthy.runs
    assert any(e["event"] == "job.failed" and e["job"] == "broken" for e in logs)


def test_a_job_never_overlaps_itself():
    jobs = Jobs()
    running = 0
    most = 0
    lock = threading.Lock()
    release = threading.Event()

    def slow() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(5)
        with lock:
            running -= 1

    record = jobs.register("slow", slow, every(0.01))
    jobs.start()
    try:
        wait_until(lambda: running == 1, timeout=10)
        assert jobs.run_now("slow") is True  # skipped: already running
        release.set()
        wait_until(lambda: record.runs >= 2, timeout=10)
    finally:
        release.set()
        jobs.stop()
    assert most == 1


def test_config_overrides_the_default_schedule_and_null_turns_a_job_off():
    jobs = Jobs({"metrics": Schedule.parse("15s"), "digest": None})
    metrics = jobs.register("metrics", lambda: None, every(60))
    digest = jobs.register("digest", lambda: None, cron("0 8 * * *"))
    assert metrics is not None and metrics.schedule.every == timedelta(seconds=15)
    assert digest is None
    assert [r.name for r in jobs.records()] == ["metrics"]


def test_schedules_become_interval_or_cron_triggers():
    assert isinstance(every(30).trigger(), IntervalTrigger)
    trigger = cron("30 2 * * *").trigger()
    assert isinstance(trigger, CronTrigger)
    assert str(trigger.fields[5]) == "2" and str(trigger.fields[6]) == "30"


def test_run_now_reports_failure_without_raising():
    jobs = Jobs()
    jobs.register("boom", lambda: 1 / 0, every(60))
    assert jobs.run_now("boom") is False
    assert jobs.record("boom").failures == 1


def test_registering_a_name_twice_is_an_error():
    jobs = Jobs()
    jobs.register("metrics", lambda: None, every(60))
    with pytest.raises(ValueError, match="already registered"):
        jobs.register("metrics", lambda: None, every(60))


def test_a_schedule_for_no_known_job_is_reported():
    jobs = Jobs({"metircs": every("10s")})
    jobs.register("metrics", lambda: None, every(60))
    with capture_logs() as logs:
        jobs.start()
        jobs.stop()
    assert {
        "event": "job.unknown_schedule",
        "job": "metircs",
        "known": ["metrics"],
        "log_level": "warning",
    } in logs
