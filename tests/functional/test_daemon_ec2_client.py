"""The daemon's start-up encryption check makes its EC2 client only when it has a volume to
ask about: building one costs ~0.13 CPU-s at every start, for nothing when the EBS volume
id is neither configured (`storage.volume_id`) nor discoverable from the mount (a tmp
directory here, as on any non-EBS disk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.aws import Clients
from agent.runtime.daemon import Daemon
from tests.support.aws import make_config


@pytest.fixture
def ec2_made(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many EC2 clients the agent made (Clients.ec2, recorded, still made)."""
    made: list[int] = []
    real = Clients.ec2

    def recording(self: Clients) -> Any:
        made.append(1)
        return real(self)

    monkeypatch.setattr(Clients, "ec2", recording)
    return made


def test_with_no_volume_id_known_no_ec2_client_is_made(
    aws: Clients, backup_root: Path, volume: Any, ec2_made: list[int]
) -> None:
    config = make_config(backup_root, storage={"root": str(backup_root), "min_free_bytes": 0})
    daemon = Daemon(config, aws)

    with capture_logs() as logs:
        daemon.check_volume_encryption()

    assert ec2_made == []
    assert [e["event"] for e in logs] == ["volume.encryption_not_checked"]


def test_with_a_configured_volume_id_the_client_is_made_and_asked(
    aws: Clients, backup_root: Path, volume: Any, ec2_made: list[int]
) -> None:
    volume_id = aws.ec2().create_volume(AvailabilityZone="us-east-1a", Size=10, Encrypted=True)[
        "VolumeId"
    ]
    ec2_made.clear()
    config = make_config(
        backup_root,
        storage={"root": str(backup_root), "min_free_bytes": 0, "volume_id": volume_id},
    )
    daemon = Daemon(config, aws)

    with capture_logs() as logs:
        daemon.check_volume_encryption()

    assert ec2_made == [1]
    assert [e["event"] for e in logs] == ["volume.encrypted"]


def test_a_client_that_cannot_be_made_is_logged_not_raised(
    aws: Clients, backup_root: Path, volume: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Clients) -> Any:
        raise RuntimeError("no EC2 endpoint")

    monkeypatch.setattr(Clients, "ec2", broken)
    config = make_config(
        backup_root,
        storage={
            "root": str(backup_root),
            "min_free_bytes": 0,
            "volume_id": "vol-0123456789abcdef0",
        },
    )
    daemon = Daemon(config, aws)

    with capture_logs() as logs:
        daemon.check_volume_encryption()

    assert [e["event"] for e in logs] == ["volume.encryption_check_failed"]
