"""Helpers shared by the snapshot tests: a settable clock, a moto EC2 volume, a manager."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
from moto import mock_aws

from agent.config import SnapshotsConfig
from agent.snapshots.flush import Flusher
from agent.snapshots.manager import SnapshotManager
from agent.storage.barrier import Barrier
from agent.storage.journal import Journal
from tests.support.clock import FakeClock

AZ = "us-east-1a"


@contextlib.contextmanager
def moto_ec2(monkeypatch: Any) -> Iterator[Any]:
    """In-process moto EC2 without its ~1,300 default AMI snapshots (which slow every scan)."""
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")
    with mock_aws():
        yield boto3.client("ec2", region_name="us-east-1")


def sync_flusher(calls: list[Path] | None = None) -> Flusher:
    """The real Flusher with fsfreeze unavailable and sync recorded (never frozen in tests)."""
    recorded = calls if calls is not None else []
    return Flusher(which=lambda _name: None, sync=recorded.append)


def make_volume(ec2: Any, size: int = 8) -> str:
    return str(ec2.create_volume(AvailabilityZone=AZ, Size=size)["VolumeId"])


def make_manager(
    ec2: Any,
    clock: FakeClock,
    root: Path,
    volume_id: str,
    *,
    alerts: list[tuple[str, str]] | None = None,
    barrier: Barrier | None = None,
    flusher: Flusher | None = None,
    on_alert: Callable[[str, str], None] | None = None,
    **kwargs: Any,
) -> SnapshotManager:
    raw_settings = kwargs.pop("settings", {})
    settings = SnapshotsConfig.model_validate({"enabled": True, **raw_settings})
    sink = alerts if alerts is not None else []
    return SnapshotManager(
        ec2,
        clock,
        settings=settings,
        volume_id=volume_id,
        region="us-east-1",
        root=root,
        journal=Journal(root / "journal"),
        barrier=barrier,
        flusher=flusher or sync_flusher(),
        on_alert=on_alert or (lambda kind, message: sink.append((kind, message))),
        **{"poll_seconds": 5.0, "sleep": clock.sleep, **kwargs},
    )
