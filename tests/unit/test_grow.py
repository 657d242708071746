"""Auto-grow (issue 17): the state machine, EBS's rules with the fake clock, failures as
alerts; the root half's command choice. moto completes a modification at once and enforces
no rate (docs/testing.md), so the states and the rate come from a fake EC2 here, and moto
drives the happy path end to end."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from agent.config import AutoGrowConfig
from agent.errors import PermanentError
from agent.storage.grow import (
    REQUEST_NAME,
    GrowState,
    VolumeGrower,
    grow_command,
    grow_filesystem,
    target_size,
    trusted_config,
)
from tests.support.clock import FakeClock

GiB = 1 << 30
VOLUME = "vol-0123456789abcdef0"
ON = AutoGrowConfig(enabled=True, used_percent=80, step_percent=20, min_step_gib=10)


class FakeEc2:
    """DescribeVolumes / DescribeVolumesModifications / ModifyVolume, states set by hand."""

    def __init__(self, size: int = 100, clock: FakeClock | None = None) -> None:
        self.size = size
        self.clock = clock or FakeClock()
        self.modifications: list[dict] = []
        self.calls: list[int] = []
        self.error: str | None = None

    def describe_volumes(self, VolumeIds):
        return {"Volumes": [{"VolumeId": VolumeIds[0], "Size": self.size}]}

    def describe_volumes_modifications(self, VolumeIds):
        return {"VolumesModifications": self.modifications[-1:]}

    def modify_volume(self, VolumeId, Size):
        if self.error:
            raise botocore.exceptions.ClientError(
                {"Error": {"Code": self.error, "Message": "refused"}}, "ModifyVolume"
            )
        self.calls.append(Size)
        self.set("modifying", Size, self.clock())  # as EBS: modifying first

    def set(self, state: str, target: int, started) -> None:
        self.modifications.append(
            {"ModificationState": state, "TargetSize": target, "StartTime": started}
        )


class Disk:
    def __init__(self, total: int, used: int) -> None:
        self.total, self.used = total, used

    def __call__(self, _root: Path) -> tuple[int, int]:
        return self.total, self.used


def grower(tmp_path, ec2, disk, clock, settings=ON):
    alerts: list[tuple[str, str]] = []
    made = VolumeGrower(
        ec2,  # type: ignore[arg-type]
        settings,
        volume_id=lambda: VOLUME,
        root=tmp_path,
        state_dir=tmp_path / "state",
        alert=lambda subject, detail: alerts.append((subject, detail)),
        clock=clock,
        usage=disk,
    )
    return made, alerts


def test_the_target_is_the_larger_step_within_the_cap():
    assert target_size(100, ON) == 120  # +20 %
    assert target_size(20, ON) == 30  # at least +10 GiB
    assert target_size(1000, ON) == 1024  # never past max_size_gib


def test_threshold_then_modify_then_wait_then_request_then_grown(tmp_path):
    clock = FakeClock()
    ec2, disk = FakeEc2(size=100, clock=clock), Disk(100 * GiB, 70 * GiB)
    grow, alerts = grower(tmp_path, ec2, disk, clock)
    request = tmp_path / "state" / REQUEST_NAME

    assert grow.step() is GrowState.IDLE and ec2.calls == []  # 70 % < 80 %
    disk.used = 85 * GiB
    assert grow.step() is GrowState.MODIFYING
    assert ec2.calls == [120] and not request.exists()
    assert alerts[-1][0] == "growing the backup volume" and "100 → 120 GiB" in alerts[-1][1]

    clock.advance(seconds=30)
    ec2.modifications[-1]["ModificationState"] = "optimizing"  # usable from here on
    assert grow.step() is GrowState.FILESYSTEM
    assert json.loads(request.read_text())["target_gib"] == 120
    assert grow.can_grow()  # under way: retention under pressure waits

    assert grow.step() is GrowState.FILESYSTEM  # the root unit has not grown it yet
    disk.total = 120 * GiB  # it did
    assert grow.step() is GrowState.IDLE
    assert alerts[-1][0] == "backup volume grown" and len(ec2.calls) == 1


def test_the_six_hour_rule_is_alerted_once_and_respected(tmp_path):
    clock = FakeClock()
    ec2, disk = FakeEc2(size=100), Disk(100 * GiB, 90 * GiB)
    ec2.set("completed", 100, clock.now - timedelta(hours=2))
    grow, alerts = grower(tmp_path, ec2, disk, clock)

    for _ in range(3):
        assert grow.step() is GrowState.IDLE
        clock.advance(minutes=1)
    assert ec2.calls == []
    assert [s for s, _ in alerts] == ["backup volume cannot grow (cooldown)"]
    assert not grow.can_grow()  # retention under pressure may go ahead meanwhile

    clock.advance(hours=4)  # 6 h after the previous modification began
    grow.step()
    assert ec2.calls == [120]


def test_a_modification_still_under_way_is_waited_for(tmp_path):
    clock = FakeClock()
    ec2 = FakeEc2()
    ec2.set("optimizing", 100, clock.now - timedelta(hours=7))
    grow, alerts = grower(tmp_path, ec2, Disk(100 * GiB, 90 * GiB), clock)
    grow.step()
    assert ec2.calls == [] and alerts == [
        ("backup volume cannot grow (busy)", f"{VOLUME}: a modification is still optimizing")
    ]


def test_the_cap_is_alerted_once_and_growing_stops(tmp_path):
    settings = ON.model_copy(update={"max_size_gib": 100})
    grow, alerts = grower(tmp_path, FakeEc2(100), Disk(100 * GiB, 95 * GiB), FakeClock(), settings)
    grow.step()
    grow.step()
    assert [s for s, _ in alerts] == ["backup volume cannot grow (cap)"]
    assert "max_size_gib (100 GiB)" in alerts[0][1] and not grow.can_grow()


@pytest.mark.parametrize("code", ["VolumeModificationRateExceeded", "UnauthorizedOperation"])
def test_an_api_error_is_an_alert_not_a_crash_and_is_retried_an_hour_later(tmp_path, code):
    ec2, clock = FakeEc2(), FakeClock()
    ec2.error = code
    grow, alerts = grower(tmp_path, ec2, Disk(100 * GiB, 90 * GiB), clock)
    assert grow.step() is GrowState.IDLE
    assert alerts == [(f"backup volume grow failed ({code})", alerts[0][1])]
    assert not grow.can_grow()
    clock.advance(minutes=30)
    grow.step()
    assert len(alerts) == 1  # not asked again within the hour
    ec2.error = None
    clock.advance(minutes=31)
    grow.step()
    assert ec2.calls == [120]


def test_a_failed_modification_is_alerted_and_the_machine_returns_to_idle(tmp_path):
    clock = FakeClock()
    ec2 = FakeEc2(clock=clock)
    grow, alerts = grower(tmp_path, ec2, Disk(100 * GiB, 90 * GiB), clock)
    assert grow.step() is GrowState.MODIFYING
    ec2.modifications[-1]["ModificationState"] = "failed"
    assert grow.step() is GrowState.IDLE
    assert alerts[-1][0] == "backup volume grow failed (failed)"
    assert not (tmp_path / "state" / REQUEST_NAME).exists()


def test_off_by_default_does_nothing(tmp_path):
    ec2 = FakeEc2()
    grow, alerts = grower(tmp_path, ec2, Disk(100 * GiB, 99 * GiB), FakeClock(), AutoGrowConfig())
    assert grow.step() is GrowState.IDLE and ec2.calls == [] and alerts == []
    assert not grow.can_grow()


def test_against_moto_the_volume_grows_and_the_request_is_written_at_once(tmp_path):
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        volume = ec2.create_volume(AvailabilityZone="us-east-1a", Size=8)["VolumeId"]
        disk, clock = Disk(8 * GiB, 7 * GiB), FakeClock()
        alerts: list[tuple[str, str]] = []
        grow = VolumeGrower(
            ec2,
            ON,
            volume_id=lambda: volume,
            root=tmp_path,
            state_dir=tmp_path / "state",
            alert=lambda s, d: alerts.append((s, d)),
            clock=clock,
            usage=disk,
        )
        assert grow.step() is GrowState.FILESYSTEM  # moto: "completed" at once
        assert ec2.describe_volumes(VolumeIds=[volume])["Volumes"][0]["Size"] == 18
        assert (tmp_path / "state" / REQUEST_NAME).exists()


# -- the root half -------------------------------------------------------------------------

MOUNTS = """\
/dev/nvme0n1p1 / xfs rw,relatime 0 0
/dev/nvme1n1 /mnt/backups ext4 rw,relatime 0 0
/dev/nvme2n1 /mnt/x\\040fs xfs rw 0 0
/dev/mapper/vg-lv /mnt/lvm btrfs rw 0 0
"""


def test_the_command_follows_the_filesystem_of_the_mount():
    assert grow_command(Path("/mnt/backups"), MOUNTS, None) == ["resize2fs", "/dev/nvme1n1"]
    assert grow_command(Path("/mnt/x fs/sub"), MOUNTS, None) == ["xfs_growfs", "/mnt/x fs"]
    with pytest.raises(PermanentError, match=r"storage\.auto_grow\.command"):
        grow_command(Path("/mnt/lvm"), MOUNTS, None)
    lvm = ["lvextend", "-r", "-l", "+100%FREE", "/dev/vg/lv"]
    assert grow_command(Path("/mnt/lvm"), MOUNTS, lvm) == lvm


def test_the_request_is_removed_never_read_and_a_failure_is_an_error(tmp_path):
    request = tmp_path / REQUEST_NAME
    request.write_text('{"command": ["rm", "-rf", "/"]}')  # untrusted: ignored
    ran: list[list[str]] = []
    done = grow_filesystem(
        Path("/mnt/backups"), None, request=request, mounts=MOUNTS, run=lambda c: ran.append(c) or 0
    )
    assert ran == [done] == [["resize2fs", "/dev/nvme1n1"]] and not request.exists()

    request.write_text("{}")
    with pytest.raises(PermanentError, match="exited with 1"):
        grow_filesystem(Path("/mnt/backups"), None, request=request, mounts=MOUNTS, run=lambda c: 1)
    assert not request.exists()


def test_the_config_naming_the_command_must_be_roots_alone(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("")
    config.chmod(0o644)
    if os.geteuid() == 0:
        trusted_config(config)  # root's, 0644
        config.chmod(0o664)
        with pytest.raises(PermanentError, match="not group/world-writable"):
            trusted_config(config)
    else:
        with pytest.raises(PermanentError, match="owned by root"):
            trusted_config(config)


def test_the_command_line_refuses_a_config_others_may_write_and_clears_the_request(tmp_path):
    import yaml

    from agent.cli import agent as cli
    from agent.cli.common import ExitCode

    config = tmp_path / "config.yaml"
    raw = {
        "aws": {"region": "us-east-1"},
        "queue": {"url": "https://sqs.us-east-1.amazonaws.com/123456789012/backup-events"},
        "buckets": ["company-documents"],
        "storage": {"root": str(tmp_path), "auto_grow": {"command": ["/bin/false"]}},
        "state": {"table": "backup-agent-objects"},
    }
    config.write_text(yaml.safe_dump(raw))
    config.chmod(0o666)  # anyone could name the command root runs
    request = tmp_path / REQUEST_NAME
    request.write_text("{}")
    code = cli.main(["grow-filesystem", "--config", str(config), "--request", str(request)])
    assert code != ExitCode.OK and not request.exists()


def test_a_filesystem_that_does_not_grow_is_alerted_once_after_half_an_hour(tmp_path):
    clock = FakeClock()
    ec2, disk = FakeEc2(clock=clock), Disk(100 * GiB, 90 * GiB)
    grow, alerts = grower(tmp_path, ec2, disk, clock)
    grow.step()
    ec2.modifications[-1]["ModificationState"] = "completed"
    assert grow.step() is GrowState.FILESYSTEM
    clock.advance(minutes=29)
    grow.step()
    assert [s for s, _ in alerts] == ["growing the backup volume"]
    for _ in range(3):
        clock.advance(minutes=1)
        assert grow.step() is GrowState.FILESYSTEM
    assert [s for s, _ in alerts][1:] == ["backup volume cannot grow (filesystem)"]
    assert "backup-agent-grow.path" in alerts[1][1]
