"""Low space on a real, size-limited tmpfs (root: `mount -t tmpfs`), in process against moto:
an object larger than the room left is held back while smaller ones are backed up, and the
held one is backed up once there is room. The kept-full case with the real agent process is
tests/reliability/test_volume_faults.py.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.monitoring.metrics import Sampler
from agent.operations.alarms import alarm_specs
from agent.pipeline.consumer import Consumer
from agent.pipeline.pause import HeldBack, Verdict, VolumeCheck
from agent.runtime.wiring import consumer_settings, volume_check
from agent.stats import Stats
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support import service
from tests.support.aws import BUCKET, TABLE, bootstrapped_aws, make_config
from tests.support.aws_hooks import record_calls
from tests.support.tmpfs import MiB, fill, small_filesystem
from tests.support.waiting import wait_until


class Listener:
    def __init__(self) -> None:
        self.paused: list[Verdict] = []
        self.resumed: list[float] = []
        self.held: list[HeldBack] = []

    def on_paused(self, verdict: Verdict) -> None:
        self.paused.append(verdict)

    def on_resumed(self, verdict: Verdict, paused_seconds: float) -> None:
        self.resumed.append(paused_seconds)

    def on_held_back(self, held: HeldBack) -> None:
        self.held.append(held)


@pytest.fixture
def tmpfs_root(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "volume"
    root.mkdir()
    with small_filesystem(root, "32m"):
        yield root


def test_an_object_larger_than_the_room_left_waits_while_smaller_ones_are_backed_up(tmpfs_root):
    config = make_config(
        tmpfs_root,
        storage={
            "root": str(tmpfs_root),
            "min_free_bytes": MiB,
            "resume_headroom_bytes": 4 * MiB,
            "hold_back": "2s",
            "pause_recheck_max": "1s",
            "compression_threads": 1,
        },
    )
    volume = Volume(tmpfs_root, min_free_bytes=config.storage.min_free_bytes)
    volume.initialise("vol-tmpfs")
    volume.open()
    filler = fill(tmpfs_root, leave=12 * MiB)  # 11 MiB of room above the floor
    listener, stats = Listener(), Stats()
    with bootstrapped_aws(config) as aws:
        calls = record_calls(aws.sqs)
        big = os.urandom(16 * MiB)  # larger than the room: its event says so
        aws.s3.put_object(Bucket=BUCKET, Key="large/big.bin", Body=big)
        small = {f"small/{n}.bin": os.urandom(512 << 10) for n in range(6)}
        for key, body in small.items():
            aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        consumer = Consumer(
            aws.sqs,
            service.make_service(aws, volume).process,
            consumer_settings(config),
            stats=stats,
            volume_check=volume_check(config, volume),
            listener=listener,
        )
        ledger = Ledger(aws.dynamodb, TABLE)
        consumer.start()
        try:
            wait_until(lambda: all(ledger.latest(BUCKET, k) for k in small), 30, "small ones")
            wait_until(lambda: listener.held, 30, "the big one held back")
            assert listener.paused == [] and consumer.paused() is None  # the rest went on
            held = listener.held[0]
            assert (held.key, held.size, held.hold_seconds) == ("large/big.bin", 16 * MiB, 2)
            assert held.free_bytes is not None and held.free_bytes < 16 * MiB
            assert ledger.latest(BUCKET, "large/big.bin") is None
            assert not any(volume.tmp_dir.iterdir())  # refused before a byte was written
            failed_backups_alarm_fires(config, stats, tmpfs_root)

            filler.unlink()  # room for it now
            wait_until(lambda: ledger.latest(BUCKET, "large/big.bin"), 30, "the big one")
        finally:
            consumer.stop(5)
            for thread in consumer._threads:
                thread.join(10)
        latest = ledger.latest(BUCKET, "large/big.bin")
        assert latest is not None and latest.sha256 == hashlib.sha256(big).hexdigest()
        volume.verify_copy(latest.sha256, len(big))
        holds = [
            p["VisibilityTimeout"]
            for p in calls.of("ChangeMessageVisibility")
            if p["VisibilityTimeout"] > 0
        ]
        assert holds and holds[0] == 2  # held, then doubled per receive: 2 s, 4 s …
        assert stats.snapshot().held_back == len(listener.held)
        received = [int(m["Attributes"]["ApproximateReceiveCount"]) for m in calls.received]
        assert max(received) <= 3  # far from the redrive


def failed_backups_alarm_fires(config, stats: Stats, root: Path) -> None:
    """A hold-back is a failed attempt: counted under its error type, sent as BackupsFailed,
    and over the failed-backups alarm's threshold (Sum > alarms.failed_backups, default 0)."""
    snapshot = stats.snapshot()
    assert snapshot.failures["DiskFull"] >= snapshot.held_back >= 1
    assert snapshot.backups_failed >= snapshot.held_back
    points = {p.name: p.value for p in Sampler(stats, root).sample()}
    topic = "arn:aws:sns:us-east-1:123456789012:alerts"
    config = config.model_copy(
        update={"alerts": config.alerts.model_copy(update={"sns_topic_arn": topic})}
    )
    dimensions = {"InstanceId": "i-test", "Volume": str(root)}
    (alarm,) = [a for a in alarm_specs(config, dimensions) if a["MetricName"] == "BackupsFailed"]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert points["BackupsFailed"] > alarm["Threshold"]


def test_auto_grow_end_to_end_threshold_modify_request_grow_and_room_again(tmp_path, tmpfs_root):
    """Against moto's EC2 and a real tmpfs: the threshold crossed → ModifyVolume → the request
    file → the root half runs the configured command (a tmpfs remount standing in for
    resize2fs) → the agent sees the larger filesystem and the volume has room again."""
    import boto3
    from moto import mock_aws

    from agent.config import AutoGrowConfig
    from agent.storage.grow import REQUEST_NAME, GrowState, VolumeGrower, grow_filesystem
    from tests.support.clock import FakeClock

    fill(tmpfs_root, leave=2 * MiB)  # ~94 % used
    settings = AutoGrowConfig(
        enabled=True,
        used_percent=80,
        max_size_gib=64,
        command=["mount", "-o", "remount,size=64m", str(tmpfs_root)],
    )
    state = tmp_path / "state"
    alerts: list[tuple[str, str]] = []
    check = VolumeCheck(Volume(tmpfs_root, min_free_bytes=4 * MiB), resume_headroom=4 * MiB)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
        grower = VolumeGrower(
            ec2,
            settings,
            volume_id=lambda: volume,
            root=tmpfs_root,
            state_dir=state,
            alert=lambda s, d: alerts.append((s, d)),
            clock=FakeClock(),
        )
        Volume(tmpfs_root).initialise("vol-tmpfs")
        assert not check.check(to_resume=True).ok  # no room: the consumer would be paused

        assert grower.step() is GrowState.FILESYSTEM  # moto: optimizing/completed at once
        assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["Size"] == 18
        request = state / REQUEST_NAME
        assert request.exists()

        # the root unit (backup-agent-grow.service) acting on the request
        mounts = Path("/proc/self/mounts").read_text()
        grow_filesystem(tmpfs_root, settings.command, request=request, mounts=mounts)
        assert not request.exists()

        assert grower.step() is GrowState.IDLE
    assert [s for s, _ in alerts] == ["growing the backup volume", "backup volume grown"]
    assert check.check(to_resume=True).ok  # room again: the consumer resumes
