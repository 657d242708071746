"""`backup-agent status`: one screen an operator can trust, built from what the agent leaves.

It reads, never writes: the agent's own `state/agent.json` (agent/runtime/agent_state.py),
the volume (marker, space), the lifecycle jobs' records under `state/` (`last-<job>.json`,
`reconcile.json`, `scrub.json`), the snapshot records, and the queue and dead-letter queue
depths from SQS. So it works while the agent is stopped.

The health: ``down`` when the agent is not running or the volume is not ready; ``degraded``
when it runs but something needs a person (paused, messages in the dead-letter queue,
failures in the last hour, the queue unreadable, a job's last run failed, no reconcile
ever run); else ``ok``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import Config
from agent.errors import VolumeNotReady
from agent.lifecycle.context import AGENT_STATE_NAME, LAST_RUN_JOBS, StateFile, last_run
from agent.snapshots.records import read_records
from agent.storage.volume import Volume

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

STALE_SECONDS = 300.0  # an agent.json older than this: the agent is not responding

OK, DEGRADED, DOWN = "ok", "degraded", "down"


@dataclass
class Status:
    health: str = OK
    problems: list[str] = field(default_factory=list)  # one line each, why not ok
    report: dict[str, Any] = field(default_factory=dict)  # everything, for --json

    def degraded(self, problem: str) -> None:
        self.problems.append(problem)
        if self.health == OK:
            self.health = DEGRADED

    def down(self, problem: str) -> None:
        self.problems.append(problem)
        self.health = DOWN


def _parse(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the agent's own)
    return True


def gather(
    config: Config,
    config_path: Path,
    sqs: SQSClient | None,
    *,
    now: datetime | None = None,
) -> Status:
    now = now or datetime.now(UTC)
    status = Status()
    volume = Volume(config.storage.root)
    status.report = {
        "health": OK,
        "version": __version__,
        "config": str(config_path),
        "volume": _volume(volume, status),
    }
    status.report["agent"] = _agent(volume, status, now)
    status.report["queue"] = _queues(config, sqs, status)
    status.report["jobs"] = _jobs(config, volume, status)
    status.report["health"] = status.health
    status.report["problems"] = status.problems
    return status


def _volume(volume: Volume, status: Status) -> dict[str, Any]:
    root = volume.root
    report: dict[str, Any] = {"root": str(root), "mounted": os.path.ismount(root), "marker": None}
    try:
        report["marker"] = volume.read_marker().volume_id
    except VolumeNotReady as exc:
        status.down(f"volume: {exc}")
    if root.is_dir():
        usage = shutil.disk_usage(root)
        report.update(used_bytes=usage.used, free_bytes=usage.free, total_bytes=usage.total)
    return report


def _agent(volume: Volume, status: Status, now: datetime) -> dict[str, Any]:
    state = StateFile(volume, AGENT_STATE_NAME).load()
    if state is None:
        status.down("agent: not running (it has never published state/agent.json here)")
        return {"state": "never started"}
    report = dict(state)
    updated = _parse(state.get("updated"))
    if state.get("stopped"):
        report["state"] = "stopped"
        status.down(f"agent: stopped at {state['stopped']}")
    elif not _pid_alive(state.get("pid")):
        report["state"] = "not running"
        status.down(f"agent: not running (pid {state.get('pid')} is gone; it did not stop cleanly)")
    elif updated is not None and (now - updated).total_seconds() > STALE_SECONDS:
        report["state"] = "not responding"
        status.down(f"agent: not responding (state last written {state.get('updated')})")
    elif state.get("paused"):
        report["state"] = "paused"
        status.degraded(f"agent: paused: {state.get('paused_reason') or 'no reason given'}")
    else:
        report["state"] = "running"
    last = _parse(state.get("last_success"))
    report["seconds_since_last_success"] = (now - last).total_seconds() if last else None
    if report["state"] in ("running", "paused") and state.get("failures_last_hour"):
        status.degraded(f"backups: {state['failures_last_hour']} failed in the last hour")
    return report


def _queues(config: Config, sqs: SQSClient | None, status: Status) -> dict[str, Any]:
    report: dict[str, Any] = {"url": config.queue.url}
    if sqs is None:
        report["error"] = "not asked (--offline)"
        return report
    try:
        attrs = sqs.get_queue_attributes(
            QueueUrl=config.queue.url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        report["visible"] = int(attrs.get("ApproximateNumberOfMessages", 0))
        report["in_flight"] = int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))
        dlq_url = (
            config.queue.dead_letter_url
            or sqs.get_queue_url(QueueName=config.queue.dead_letter_name)["QueueUrl"]
        )
        dlq = sqs.get_queue_attributes(
            QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        report["dead_letter"] = int(dlq.get("ApproximateNumberOfMessages", 0))
    except Exception as exc:  # noqa: BLE001 - any failure is shown, not raised
        report["error"] = f"{type(exc).__name__}: {exc}"
        status.degraded(f"queue: cannot read it: {report['error']}")
        return report
    if report["dead_letter"]:
        status.degraded(
            f"dead-letter queue: {report['dead_letter']} message(s) (see docs/runbooks.md)"
        )
    return report


def _jobs(config: Config, volume: Volume, status: Status) -> dict[str, Any]:
    jobs: dict[str, Any] = {}
    for job in LAST_RUN_JOBS:
        record = last_run(volume, job) if volume.root.is_dir() else None
        if record is None and job == "reconcile":
            checkpoint = StateFile(volume, "reconcile.json").load()
            if checkpoint:
                done = checkpoint.get("completed_at")
                record = {
                    "started_at": checkpoint.get("started_at"),
                    "finished_at": done,
                    "outcome": "ok" if done else "unfinished (resumes on the next run)",
                }
        if record is None and job == "scrub":
            cursor = StateFile(volume, "scrub.json").load()
            if cursor and cursor.get("last_run_at"):
                record = {"finished_at": cursor["last_run_at"], "outcome": "ok"}
        jobs[job] = record
        if record is None and job == "reconcile":
            status.degraded(
                "reconcile: no reconcile has ever run: objects written before the agent started"
                " are not backed up (run: backup-agent reconcile)"
            )
        elif record is not None and str(record.get("outcome", "")).startswith("failed"):
            status.degraded(f"{job}: last run {record['outcome']}")
    records = read_records(volume.root) if volume.root.is_dir() else []
    jobs["snapshot"] = records[-1] if records else None
    if records and records[-1].get("state") in ("error", "stuck"):
        status.degraded(f"snapshot: last one {records[-1].get('state')}")
    if not config.snapshots.enabled:
        jobs["snapshot"] = jobs["snapshot"] or "disabled"
    return jobs
