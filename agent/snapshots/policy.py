"""Snapshot retention, pure: which snapshots to keep and which to delete.

Retention keeps the newest `last` snapshots, the newest of each of the last `daily`
UTC days and of each of the last `weekly` ISO weeks. Pending snapshots are kept and
never counted; failed ones are deleted. The manager applies the plan, and only to
snapshots `list_snapshots` found tagged as the agent's and this volume's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from agent.config import SnapshotRetention
from agent.snapshots.records import Snapshot


@dataclass(frozen=True, slots=True)
class RetentionPlan:
    keep: tuple[Snapshot, ...]
    delete: tuple[Snapshot, ...]


def retention_plan(
    snapshots: Iterable[Snapshot], retain: SnapshotRetention, now: datetime
) -> RetentionPlan:
    """Which completed snapshots to keep and which to delete.

    Pending snapshots are kept (never counted, never deleted); failed ones are deleted.
    """
    ordered = sorted(snapshots, key=lambda s: (s.taken_at, s.snapshot_id), reverse=True)
    completed = [s for s in ordered if s.state == "completed"]
    keep_ids = {s.snapshot_id for s in completed[: retain.last]}
    today = now.astimezone(UTC).date()
    days = {today - timedelta(days=n) for n in range(retain.daily)}
    weeks = {_week_of(today - timedelta(weeks=n)) for n in range(retain.weekly)}
    seen_days: set[date] = set()
    seen_weeks: set[date] = set()
    for snapshot in completed:  # newest first: the first one seen per period is kept
        day = snapshot.taken_at.astimezone(UTC).date()
        if day in days and day not in seen_days:
            seen_days.add(day)
            keep_ids.add(snapshot.snapshot_id)
        week = _week_of(day)
        if week in weeks and week not in seen_weeks:
            seen_weeks.add(week)
            keep_ids.add(snapshot.snapshot_id)
    keep = tuple(s for s in ordered if s.snapshot_id in keep_ids or s.state not in _FINAL)
    delete = tuple(s for s in ordered if s not in keep)
    return RetentionPlan(keep=keep, delete=delete)


_FINAL = frozenset({"completed", "error"})


def _week_of(day: date) -> date:
    """The Monday starting the ISO week of `day`."""
    return day - timedelta(days=day.weekday())
