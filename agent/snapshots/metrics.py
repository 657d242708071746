"""What CloudWatch sees of the snapshots: the metric values and the snapshot-age alarm.

`snapshot_metrics` gives the values the metrics publisher sends (age of the newest
completed snapshot, count, last duration); `snapshot_age_alarm` gives the alarm that
fires when the newest completed snapshot is older than the schedule allows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from agent.config import SnapshotsConfig
from agent.snapshots.records import Snapshot, SnapshotRun

METRIC_NAMESPACE = "BackupAgent"
AGE_METRIC = "SnapshotAgeSeconds"


def snapshot_metrics(
    snapshots: Iterable[Snapshot], now: datetime, last_run: SnapshotRun | None = None
) -> dict[str, float]:
    """SnapshotAgeSeconds (newest completed), SnapshotCount (completed), SnapshotDurationSeconds.

    Age is absent when there is no completed snapshot: the alarm treats missing data as
    breaching. Duration is that of the last run of this process, when there was one.
    """
    completed = [s for s in snapshots if s.state == "completed"]
    values: dict[str, float] = {"SnapshotCount": float(len(completed))}
    if completed:
        newest = max(s.taken_at for s in completed)
        values[AGE_METRIC] = max(0.0, (now - newest).total_seconds())
    if last_run is not None and last_run.duration_seconds is not None:
        values["SnapshotDurationSeconds"] = last_run.duration_seconds
    return values


def snapshot_age_alarm(
    settings: SnapshotsConfig,
    *,
    alarm_name: str = "backup-agent-snapshot-age",
    namespace: str = METRIC_NAMESPACE,
    dimensions: Iterable[Mapping[str, str]] = (),
    alarm_actions: Iterable[str] = (),
    grace: timedelta = timedelta(hours=1),
    period_seconds: int = 300,
) -> dict[str, Any]:
    """put_metric_alarm kwargs: the newest completed snapshot is older than the schedule allows.

    Allowed age = the longest gap of the schedule + `grace` (time for the snapshot to complete).
    """
    allowed = settings.schedule.max_gap() + grace  # the schedule the snapshot job runs on
    actions = list(alarm_actions)
    return {
        "AlarmName": alarm_name,
        "AlarmDescription": (
            f"The newest completed EBS snapshot of the backup volume is older than {allowed}"
            f" (schedule {str(settings.schedule)!r} plus {grace} to complete)."
        ),
        "Namespace": namespace,
        "MetricName": AGE_METRIC,
        "Dimensions": [dict(d) for d in dimensions],
        "Statistic": "Maximum",
        "Period": period_seconds,
        "EvaluationPeriods": 1,
        "Threshold": allowed.total_seconds(),
        "ComparisonOperator": "GreaterThanThreshold",
        "TreatMissingData": "breaching",
        "AlarmActions": actions,
        "OKActions": actions,
        "Unit": "Seconds",
    }
