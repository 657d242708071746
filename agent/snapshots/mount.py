"""`scripts/mount-snapshot SNAPSHOT_ID`: a snapshot of the backup volume, mounted read-only.

Creates a volume from the snapshot in this instance's Availability Zone, waits for it,
attaches it at a free device, finds the disk the kernel made of it (the NVMe serial on
Nitro, /dev/xvdX or /dev/sdX otherwise), mounts it read-only at /mnt/snapshot-<id> and
prints the `backup-restore … --offline --root MOUNT` command to run next.

The snapshot id is checked (snap- and 8 or 17 hex digits) before any call: it becomes a
path. The mount is `ro,nosuid,nodev,noexec` (a snapshot's content is data to restore,
never programs or devices to trust), and never onto a symbolic link.
`--dry-run` prints the plan and changes nothing; `--no-mount` stops after the attach.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import botocore.exceptions

from agent.errors import BackupAgentError, ConfigError
from agent.imds import Imds, MetadataUnavailable
from agent.snapshots.records import JOURNAL_TAG, TAKEN_AT_TAG, VOLUME_TAG, tag_dict, tag_list
from agent.storage.volume_id import nvme_volume_id

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

DEVICE_LETTERS = "fghijklmnop"  # the range EC2 recommends for EBS data volumes
SNAPSHOT_ID = re.compile(r"snap-(?:[0-9a-f]{8}|[0-9a-f]{17})")
MOUNT_OPTIONS = "ro,nosuid,nodev,noexec"
RESTORE_TAG = "backup-agent:restore-of"


@dataclass(frozen=True, slots=True)
class MountPlan:
    snapshot_id: str
    source_volume_id: str
    taken_at: str
    journal_position: str
    size_gib: int
    instance_id: str
    availability_zone: str
    device: str
    mount_point: Path
    volume_type: str


class SnapshotMounter:
    """The AWS and local steps; clients, metadata, sleep and `run` are passed in."""

    def __init__(
        self,
        ec2: EC2Client,
        *,
        imds: Imds | None = None,
        sleep: Callable[[float], None] = time.sleep,
        run: Callable[..., Any] = subprocess.run,
        sys_root: Path = Path("/sys"),
        dev_root: Path = Path("/dev"),
        poll_seconds: float = 3.0,
        timeout_seconds: float = 900.0,
        out: TextIO | None = None,
    ) -> None:
        self.ec2 = ec2
        self.imds = imds
        self.sleep = sleep
        self.run = run
        self.sys_root = sys_root
        self.dev_root = dev_root
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds
        self.out = out or sys.stdout

    # -- plan ---------------------------------------------------------------------------

    def plan(
        self,
        snapshot_id: str,
        *,
        instance_id: str | None = None,
        availability_zone: str | None = None,
        device: str | None = None,
        mount_root: Path = Path("/mnt"),
        volume_type: str = "gp3",
    ) -> MountPlan:
        check_snapshot_id(snapshot_id)
        snapshot = self._snapshot(snapshot_id)
        tags = tag_dict(snapshot.get("Tags", []))
        instance_id = instance_id or self._own_instance_id()
        instance = self._instance(instance_id)
        zone = availability_zone or str(instance["Placement"]["AvailabilityZone"])
        return MountPlan(
            snapshot_id=snapshot_id,
            source_volume_id=tags.get(VOLUME_TAG, str(snapshot.get("VolumeId", "?"))),
            taken_at=tags.get(TAKEN_AT_TAG, str(snapshot.get("StartTime", "?"))),
            journal_position=tags.get(JOURNAL_TAG, "-"),
            size_gib=int(snapshot.get("VolumeSize", 0)),
            instance_id=instance_id,
            availability_zone=zone,
            device=device or free_device(instance),
            mount_point=mount_root / f"snapshot-{snapshot_id}",
            volume_type=volume_type,
        )

    def describe(self, plan: MountPlan) -> None:
        self._say(f"snapshot {plan.snapshot_id} of {plan.source_volume_id}, taken {plan.taken_at}")
        self._say(f"  journal position at the snapshot: {plan.journal_position}")
        self._say(
            f"  1. create a {plan.size_gib} GiB {plan.volume_type} volume from it"
            f" in {plan.availability_zone}"
        )
        self._say(f"  2. attach it to {plan.instance_id} as {plan.device}")
        self._say(f"  3. mount it read-only at {plan.mount_point}")

    # -- execute ------------------------------------------------------------------------

    def create_and_attach(self, plan: MountPlan) -> str:
        """Create the volume, wait until available, attach, wait until attached."""
        volume = self._call(
            "CreateVolume",
            self.ec2.create_volume,
            SnapshotId=plan.snapshot_id,
            AvailabilityZone=plan.availability_zone,
            VolumeType=plan.volume_type,
            TagSpecifications=[
                {
                    "ResourceType": "volume",
                    "Tags": tag_list(
                        {
                            "Name": f"backup-agent restore of {plan.snapshot_id}",
                            RESTORE_TAG: plan.snapshot_id,
                        }
                    ),
                }
            ],
        )
        volume_id = str(volume["VolumeId"])
        self._say(f"created {volume_id}; waiting for it to be available")
        self._wait(volume_id, lambda v: v["State"] == "available", "available")
        self._call(
            "AttachVolume",
            self.ec2.attach_volume,
            VolumeId=volume_id,
            InstanceId=plan.instance_id,
            Device=plan.device,
        )
        self._say(f"attaching {volume_id} to {plan.instance_id} as {plan.device}")
        self._wait(volume_id, _attached_to(plan.instance_id), "attached")
        return volume_id

    def mount(self, plan: MountPlan, volume_id: str) -> Path:
        """Find the kernel's disk for `volume_id`, mount it read-only."""
        check_snapshot_id(plan.snapshot_id)
        if plan.mount_point.is_symlink():
            raise BackupAgentError(
                f"{plan.mount_point} is a symbolic link: refusing to mount through it"
            )
        device = self._wait_for_device(volume_id, plan.device)
        fstype = self._fstype(device)
        options = MOUNT_OPTIONS + (",nouuid" if fstype == "xfs" else "")  # XFS clone: same UUID
        plan.mount_point.mkdir(mode=0o700, parents=True, exist_ok=True)
        if plan.mount_point.is_symlink() or not plan.mount_point.is_dir():
            raise BackupAgentError(f"{plan.mount_point} is not a plain directory")
        result = self.run(
            ["mount", "-o", options, str(device), str(plan.mount_point)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BackupAgentError(f"mount {device} failed: {result.stderr.strip()}")
        self._say(
            f"mounted {device} ({fstype or 'unknown fs'}) read-only ({options})"
            f" at {plan.mount_point}"
        )
        return plan.mount_point

    def next_steps(self, plan: MountPlan, volume_id: str, mounted: bool) -> None:
        root = plan.mount_point
        if not mounted:
            self._say(f"not mounted (--no-mount); mount it read-only at {root}, then:")
        config = "--config /etc/backup-agent/config.yaml"
        self._say("restore from it (the volume's own journal, no DynamoDB needed):")
        self._say(f"  backup-restore list {config} --offline --root {root}")
        self._say(f"  backup-restore restore {config} --offline --root {root} --all --to DIR")
        self._say("when done:")
        self._say(f"  sudo umount {root}")
        self._say(f"  aws ec2 detach-volume --volume-id {volume_id}")
        self._say(f"  aws ec2 delete-volume --volume-id {volume_id}")

    # -- helpers ------------------------------------------------------------------------

    def _snapshot(self, snapshot_id: str) -> dict[str, Any]:
        found = self._call(
            "DescribeSnapshots", self.ec2.describe_snapshots, SnapshotIds=[snapshot_id]
        )
        items = found.get("Snapshots", [])
        if not items:
            raise BackupAgentError(f"snapshot {snapshot_id} not found")
        snapshot: dict[str, Any] = items[0]
        if snapshot.get("State") != "completed":
            raise BackupAgentError(
                f"snapshot {snapshot_id} is {snapshot.get('State')}, not completed"
            )
        return snapshot

    def _instance(self, instance_id: str) -> dict[str, Any]:
        found = self._call(
            "DescribeInstances", self.ec2.describe_instances, InstanceIds=[instance_id]
        )
        for reservation in found.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return dict(instance)
        raise BackupAgentError(f"instance {instance_id} not found")

    def _own_instance_id(self) -> str:
        if self.imds is None:
            raise ConfigError(["--instance-id: not given and instance metadata is not available"])
        try:
            return self.imds.instance_id()
        except MetadataUnavailable as exc:
            raise ConfigError([f"--instance-id: not given, and {exc}"]) from None

    def _wait(self, volume_id: str, done: Callable[[dict[str, Any]], bool], what: str) -> None:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            volumes = self._call(
                "DescribeVolumes", self.ec2.describe_volumes, VolumeIds=[volume_id]
            )["Volumes"]
            if volumes and done(volumes[0]):
                return
            if volumes and volumes[0].get("State") == "error":
                raise BackupAgentError(f"volume {volume_id} is in the error state")
            if time.monotonic() >= deadline:
                raise BackupAgentError(
                    f"volume {volume_id} not {what} after {self.timeout_seconds} s"
                )
            self.sleep(self.poll_seconds)

    def _wait_for_device(self, volume_id: str, ec2_device: str) -> Path:
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            device = local_device(volume_id, ec2_device, self.sys_root, self.dev_root)
            if device is not None:
                return device
            if time.monotonic() >= deadline:
                raise BackupAgentError(f"no local disk for {volume_id} ({ec2_device}) appeared")
            self.sleep(self.poll_seconds)

    def _fstype(self, device: Path) -> str:
        result = self.run(
            ["blkid", "-o", "value", "-s", "TYPE", str(device)],
            capture_output=True,
            text=True,
            check=False,
        )
        return str(result.stdout).strip() if result.returncode == 0 else ""

    def _call(self, what: str, method: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise BackupAgentError(f"EC2 {what}: {exc}") from None

    def _say(self, text: str) -> None:
        print(text, file=self.out)


def check_snapshot_id(snapshot_id: str) -> str:
    """`snapshot_id` if it is one (snap- and 8 or 17 hex digits); ConfigError otherwise."""
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise ConfigError(
            [f"SNAPSHOT_ID: {snapshot_id!r} is not a snapshot id (snap-0123456789abcdef0)"]
        )
    return snapshot_id


def free_device(instance: dict[str, Any]) -> str:
    """The first /dev/sd[f-p] no block-device mapping uses (xvdX counts as sdX)."""
    used = set()
    for mapping in instance.get("BlockDeviceMappings", []):
        name = str(mapping.get("DeviceName", "")).removeprefix("/dev/")
        for prefix in ("xvd", "sd"):
            if name.startswith(prefix):
                used.add(name[len(prefix) : len(prefix) + 1])
    for letter in DEVICE_LETTERS:
        if letter not in used:
            return f"/dev/sd{letter}"
    raise BackupAgentError("no free device name between /dev/sdf and /dev/sdp")


def local_device(
    volume_id: str, ec2_device: str, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")
) -> Path | None:
    """The disk (or its only partition) the kernel made of `volume_id`, once it exists."""
    block = sys_root / "block"
    disk: str | None = None
    if block.is_dir():
        for entry in sorted(block.iterdir()):
            if nvme_volume_id(entry.name, sys_root) == volume_id:
                disk = entry.name
                break
    if disk is None:
        letter = ec2_device.removeprefix("/dev/").removeprefix("xvd").removeprefix("sd")
        for name in (f"xvd{letter}", f"sd{letter}"):
            if (dev_root / name).exists():
                disk = name
                break
    if disk is None:
        return None
    partitions = sorted(
        p.name for p in (block / disk).glob(f"{disk}*") if (p / "partition").exists()
    )
    return dev_root / (partitions[0] if len(partitions) == 1 else disk)


def _attached_to(instance_id: str) -> Callable[[dict[str, Any]], bool]:
    def done(volume: dict[str, Any]) -> bool:
        return any(
            a.get("InstanceId") == instance_id and a.get("State") == "attached"
            for a in volume.get("Attachments", [])
        )

    return done
