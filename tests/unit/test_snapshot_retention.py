"""Retention keeps the last N, one per day for D days, one per week for W weeks; only ours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.config import SnapshotRetention
from agent.snapshots.policy import retention_plan
from agent.snapshots.records import MANAGED_TAG, VOLUME_TAG, Snapshot, tag_list
from tests.support.clock import FakeClock
from tests.support.snapshots import make_manager, make_volume, moto_ec2


def snap(ident: str, taken: datetime, state: str = "completed") -> Snapshot:
    return Snapshot(ident, "vol-1", "us-east-1", state, taken)


def test_plan_keeps_last_daily_and_weekly_newest_per_period():
    # Given snapshots at 06:00 and 18:00 from Thu 2026-01-01 to Wed 2026-01-21
    start = datetime(2026, 1, 1, 6, tzinfo=UTC)
    snaps = [snap(f"s{i:02d}", start + timedelta(hours=12 * i)) for i in range(42)]
    now = snaps[-1].taken_at
    # When the policy is last 3, daily 5, weekly 3
    plan = retention_plan(snaps, SnapshotRetention(last=3, daily=5, weekly=3), now)
    # Then exactly these survive (dates are UTC)
    kept = sorted(s.taken_at.strftime("%m-%d %H") for s in plan.keep)
    assert kept == [
        "01-11 18",  # newest of the ISO week starting Mon 01-05
        "01-17 18",  # daily
        "01-18 18",  # daily, and newest of the week starting Mon 01-12
        "01-19 18",  # daily
        "01-20 18",  # last 3, daily
        "01-21 06",  # last 3
        "01-21 18",  # last 3, daily, newest of this week
    ]
    assert len(plan.delete) == 42 - 7


def test_pending_snapshots_are_never_deleted_and_failed_ones_are():
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    snaps = [
        snap("old-pending", now - timedelta(days=40), "pending"),
        snap("failed", now - timedelta(hours=1), "error"),
        snap("good", now - timedelta(hours=2)),
    ]
    plan = retention_plan(snaps, SnapshotRetention(last=1, daily=0, weekly=0), now)
    assert {s.snapshot_id for s in plan.keep} == {"old-pending", "good"}
    assert {s.snapshot_id for s in plan.delete} == {"failed"}


def test_a_failed_snapshot_does_not_count_towards_last():
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    snaps = [snap("failed", now, "error"), snap("older", now - timedelta(days=3))]
    plan = retention_plan(snaps, SnapshotRetention(last=1, daily=0, weekly=0), now)
    assert [s.snapshot_id for s in plan.keep] == ["older"]


@pytest.fixture
def ec2(monkeypatch):
    with moto_ec2(monkeypatch) as client:
        yield client


def test_retention_across_an_injected_clock_keeps_exactly_the_policy_and_never_foreign(
    ec2, tmp_path
):
    volume_id = make_volume(ec2)
    other_volume = make_volume(ec2)
    # Snapshots the agent must never touch: untagged, tagged for another volume, managed=false
    untagged = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    foreign = ec2.create_snapshot(
        VolumeId=other_volume,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": tag_list({MANAGED_TAG: "true", VOLUME_TAG: other_volume}),
            }
        ],
    )["SnapshotId"]
    opted_out = ec2.create_snapshot(
        VolumeId=volume_id,
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": tag_list({MANAGED_TAG: "false"})}],
    )["SnapshotId"]
    clock = FakeClock(datetime(2026, 1, 1, 6, tzinfo=UTC))
    manager = make_manager(
        ec2, clock, tmp_path, volume_id, settings={"retain": {"last": 3, "daily": 5, "weekly": 3}}
    )
    taken: dict[str, str] = {}
    for _ in range(42):  # every 12 hours, retention applied after each
        run = manager.take()
        assert run.state == "completed"
        taken[run.snapshot_id] = clock.now.strftime("%m-%d %H")
        clock.advance(hours=12)

    remaining = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    ours = sorted(taken[i] for i in remaining if i in taken)
    assert ours == [
        "01-11 18",
        "01-17 18",
        "01-18 18",
        "01-19 18",
        "01-20 18",
        "01-21 06",
        "01-21 18",
    ]
    assert {untagged, foreign, opted_out} <= remaining


def test_dry_run_retention_lists_but_deletes_nothing(ec2, tmp_path):
    volume_id = make_volume(ec2)
    clock = FakeClock(datetime(2026, 1, 1, tzinfo=UTC))
    manager = make_manager(
        ec2, clock, tmp_path, volume_id, settings={"retain": {"last": 5, "daily": 0, "weekly": 0}}
    )
    for _ in range(5):
        manager.take()
        clock.advance(days=1)
    manager = make_manager(
        ec2, clock, tmp_path, volume_id, settings={"retain": {"last": 2, "daily": 0, "weekly": 0}}
    )
    would = manager.apply_retention(dry_run=True)
    assert len(would) == 3
    ours = ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [volume_id]}])
    assert len(ours["Snapshots"]) == 5
