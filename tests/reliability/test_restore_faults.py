"""`backup-restore` under faults, in-process (moto, the CLI's own clients): a copy with a
flipped byte and DynamoDB failing part-way through the run. What is restored is whole, the
corrupt file fails alone, and `--offline` (the volume's journal) restores without DynamoDB.
"""

from __future__ import annotations

import io
import os

import pytest

import agent.aws
from agent.cli.restore import main
from agent.storage.ledger import Ledger
from tests.reliability.pipeline import SERVER_ERROR, THROTTLE, UNAVAILABLE, Faults
from tests.support.aws import BUCKET, TABLE
from tests.support.backed_up import BackedUp, write_config


class OutageAfter(Faults):
    """DynamoDB answers `healthy` calls, then fails every attempt (500/503/throttle)."""

    def __init__(self, healthy: int) -> None:
        super().__init__()
        self.healthy = healthy

    def _next(self, operation: str, phase: str) -> str | None:
        if not operation.startswith("dynamodb.") or phase != "send":
            return None
        with self._lock:
            self.calls[operation] += 1
            if sum(self.calls.values()) <= self.healthy:
                return None
            fault = (SERVER_ERROR, UNAVAILABLE, THROTTLE)[sum(self.calls.values()) % 3]
            self.injected[f"{operation}:{fault}"] += 1
            return fault


def _tree(directory):
    return {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}


@pytest.mark.parametrize("healthy", [0, 1])
def test_a_dynamodb_outage_mid_restore_and_a_flipped_byte_lose_nothing_whole(
    aws, volume, backup_root, tmp_path, monkeypatch, healthy
):
    backups = BackedUp(aws, volume)
    objects = {f"r/{n:02d}.bin": os.urandom(2000) + bytes([n]) * 30_000 for n in range(12)}
    for key, body in objects.items():
        backups.put(key, body)
    bad = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "r/05.bin")
    path = volume.copy_path(bad.sha256)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    faults = OutageAfter(healthy)
    built = agent.aws.build_clients

    def faulted(config):
        clients = built(config)
        faults.attach(clients.dynamodb)
        return clients

    monkeypatch.setattr(agent.aws, "build_clients", faulted)
    config_path = write_config(
        tmp_path / "config.yaml", backup_root, aws={"region": "us-east-1", "max_attempts": 1}
    )

    def restore(*args: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = main(["restore", "--config", str(config_path), *args], out=out, err=err)
        return code, out.getvalue(), err.getvalue()

    online = tmp_path / "online"
    code, _out, err = restore("--all", "--to", str(online))
    assert code != 0
    restored = _tree(online) if online.exists() else set()
    for name in restored:  # what got out is whole; the corrupt copy never does
        assert (online / name).read_bytes() == objects[name], name
    assert "r/05.bin" not in restored
    if faults.injected:  # the outage hit the planning: nothing restored, --offline suggested
        assert "--offline" in err and restored == set()
    else:  # the plan was read before the outage: DynamoDB is not needed after it
        assert restored == set(objects) - {"r/05.bin"}

    offline = tmp_path / "offline"
    calls_before = sum(faults.calls.values())
    code, out, err = restore("--all", "--offline", "--to", str(offline))
    assert code == 1, err  # only the corrupt copy failed
    assert sum(faults.calls.values()) == calls_before  # DynamoDB not asked at all
    assert _tree(offline) == set(objects) - {"r/05.bin"}
    for name in _tree(offline):
        assert (offline / name).read_bytes() == objects[name]
    assert "r/05.bin" in out and "is corrupt" in out
