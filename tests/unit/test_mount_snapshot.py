"""scripts/mount-snapshot: its AWS calls against moto, its local steps against fakes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from agent.cli.mount_snapshot import main
from agent.snapshots.mount import RESTORE_TAG, MountPlan, SnapshotMounter, local_device
from agent.snapshots.records import MANAGED_TAG, VOLUME_TAG, tag_dict, tag_list
from tests.support.snapshots import moto_ec2


@pytest.fixture
def ec2(monkeypatch):
    with moto_ec2(monkeypatch) as client:
        yield client


@pytest.fixture
def scene(ec2):
    """An instance in us-east-1b with /dev/sdf taken, and a completed agent snapshot."""
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": "us-east-1b"}
    )["Instances"][0]["InstanceId"]
    busy = ec2.create_volume(AvailabilityZone="us-east-1b", Size=1)["VolumeId"]
    ec2.attach_volume(VolumeId=busy, InstanceId=instance, Device="/dev/sdf")
    source = ec2.create_volume(AvailabilityZone="us-east-1a", Size=20)["VolumeId"]
    snapshot = ec2.create_snapshot(
        VolumeId=source,
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": tag_list({MANAGED_TAG: "true", VOLUME_TAG: source}),
            }
        ],
    )["SnapshotId"]
    return instance, snapshot, source


def volumes_from(ec2, snapshot):
    return ec2.describe_volumes(Filters=[{"Name": "snapshot-id", "Values": [snapshot]}])["Volumes"]


def test_creates_the_volume_in_the_instances_zone_and_attaches_it_at_a_free_device(
    ec2, scene, capsys
):
    instance, snapshot, source = scene

    code = main([snapshot, "--instance-id", instance, "--no-mount"], ec2=ec2)

    assert code == 0
    [volume] = volumes_from(ec2, snapshot)
    assert volume["AvailabilityZone"] == "us-east-1b"
    assert volume["Size"] == 20 and volume["VolumeType"] == "gp3"
    assert tag_dict(volume["Tags"])[RESTORE_TAG] == snapshot
    [attachment] = volume["Attachments"]
    assert (attachment["InstanceId"], attachment["Device"]) == (instance, "/dev/sdg")
    assert attachment["State"] == "attached"
    out = capsys.readouterr().out
    assert f"snapshot {snapshot} of {source}" in out
    assert f"--offline --root /mnt/snapshot-{snapshot}" in out
    assert f"aws ec2 delete-volume --volume-id {volume['VolumeId']}" in out


def test_dry_run_prints_the_plan_and_creates_nothing(ec2, scene, capsys):
    instance, snapshot, _ = scene
    assert main([snapshot, "--instance-id", instance, "--dry-run"], ec2=ec2) == 0
    assert volumes_from(ec2, snapshot) == []
    out = capsys.readouterr().out
    assert "attach it to" in out and "/dev/sdg" in out and "dry run" in out


def test_json_dry_run_is_one_document_and_creates_nothing(ec2, scene, capsys):
    instance, snapshot, source = scene
    assert main(["--json", snapshot, "--instance-id", instance, "--dry-run"], ec2=ec2) == 0
    assert volumes_from(ec2, snapshot) == []
    document = json.loads(capsys.readouterr().out)
    assert (document["dry_run"], document["volume_id"], document["mounted"]) == (True, None, False)
    assert document["plan"]["snapshot_id"] == snapshot
    assert document["plan"]["source_volume_id"] == source
    assert document["plan"]["mount_point"] == f"/mnt/snapshot-{snapshot}"


def test_quiet_prints_nothing_on_success(ec2, scene, capsys):
    instance, snapshot, _ = scene
    assert main([snapshot, "-q", "--instance-id", instance, "--dry-run"], ec2=ec2) == 0
    assert capsys.readouterr().out == ""


def test_an_explicit_zone_and_device_are_used(ec2, scene):
    instance, snapshot, _ = scene
    args = [snapshot, "--instance-id", instance, "--az", "us-east-1b", "--device", "/dev/sdp"]
    assert main([*args, "--no-mount"], ec2=ec2) == 0
    [volume] = volumes_from(ec2, snapshot)
    assert volume["Attachments"][0]["Device"] == "/dev/sdp"


def test_an_unfinished_snapshot_is_refused(ec2, scene, capsys):
    instance, snapshot, _ = scene

    def pending(parsed, **_):
        for item in parsed.get("Snapshots", []):
            item["State"] = "pending"

    ec2.meta.events.register("after-call.ec2.DescribeSnapshots", pending)
    assert main([snapshot, "--instance-id", instance, "--no-mount"], ec2=ec2) == 1
    assert "is pending, not completed" in capsys.readouterr().err
    assert volumes_from(ec2, snapshot) == []


def test_without_an_instance_id_or_metadata_it_says_what_to_pass(ec2, scene, capsys):
    _, snapshot, _ = scene
    assert main([snapshot, "--no-mount"], ec2=ec2) == 2
    assert "--instance-id" in capsys.readouterr().err


# -- the local steps ---------------------------------------------------------------------


class FakeRun:
    def __init__(self, fstype: str) -> None:
        self.fstype = fstype
        self.commands: list[list[str]] = []

    def __call__(self, command, **_):
        self.commands.append(command)
        out = self.fstype + "\n" if command[0] == "blkid" else ""
        return subprocess.CompletedProcess(command, 0, out, "")


def plan(tmp_path: Path) -> MountPlan:
    return MountPlan(
        snapshot_id="snap-0123456789abcdef0",
        source_volume_id="vol-0aaa",
        taken_at="-",
        journal_position="-",
        size_gib=20,
        instance_id="i-1",
        availability_zone="us-east-1a",
        device="/dev/sdg",
        mount_point=tmp_path / "mnt" / "snapshot-snap-0123456789abcdef0",
        volume_type="gp3",
    )


def test_mounts_the_nitro_disk_found_by_serial_read_only_and_xfs_without_uuid_check(tmp_path):
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    for name, serial in (("nvme1n1", "vol0aaaaaaaaaaaaaaaa"), ("nvme2n1", "vol0123456789abcdef0")):
        (sys_root / "block" / name / "device").mkdir(parents=True)
        (sys_root / "block" / name / "device" / "serial").write_text(serial)
    run = FakeRun("xfs")
    mounter = SnapshotMounter(None, run=run, sys_root=sys_root, dev_root=dev_root)
    target = plan(tmp_path)

    mounted = mounter.mount(target, "vol-0123456789abcdef0")

    assert mounted.is_dir()
    assert run.commands[-1] == [
        "mount",
        "-o",
        "ro,nosuid,nodev,noexec,nouuid",
        str(dev_root / "nvme2n1"),
        str(target.mount_point),
    ]


def test_a_xen_disk_is_found_by_its_device_letter_and_its_only_partition_used(tmp_path):
    sys_root, dev_root = tmp_path / "sys", tmp_path / "dev"
    (sys_root / "block" / "xvdg" / "xvdg1").mkdir(parents=True)
    (sys_root / "block" / "xvdg" / "xvdg1" / "partition").write_text("1")
    dev_root.mkdir()
    (dev_root / "xvdg").touch()
    assert local_device("vol-0abc", "/dev/sdg", sys_root, dev_root) == dev_root / "xvdg1"
    assert local_device("vol-0abc", "/dev/sdh", sys_root, dev_root) is None
