"""Which EBS volume holds the backup root.

In order: `storage.volume_id` from the config; the NVMe serial of the mount's block
device (on Nitro instances an EBS disk's serial is its volume id without the dash,
`vol0123456789abcdef0`); instance metadata (the instance id and its block-device
mapping) plus DescribeVolumes, for Xen instances whose disks carry no serial.

`proc_root` and `sys_root` are parameters so tests build a fake /proc and /sys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions
import structlog

from agent.errors import BackupAgentError, ConfigError
from agent.imds import Imds

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = structlog.get_logger("agent.volume_id")

_SERIAL = re.compile(r"vol-?([0-9a-f]{8,17})")
_OCTAL = re.compile(r"\\([0-7]{3})")


class VolumeIdUnknown(ConfigError):
    """No way to tell the backup root's EBS volume id; set storage.volume_id."""


@dataclass(frozen=True, slots=True)
class Mount:
    mount_point: Path
    device_number: str  # "259:1"
    fstype: str
    source: str  # "/dev/nvme1n1"


def discover_volume_id(
    root: Path,
    *,
    configured: str | None = None,
    proc_root: Path = Path("/proc"),
    sys_root: Path = Path("/sys"),
    imds: Imds | None = None,
    ec2: EC2Client | None = None,
) -> str:
    """The EBS volume id of `root`'s filesystem, or VolumeIdUnknown saying why not."""
    if configured:
        return configured
    reasons: list[str] = []
    try:
        mount = mount_of(root, proc_root)
        disk = disk_of(mount, sys_root)
        serial = nvme_volume_id(disk, sys_root)
        if serial:
            log.info("volume_id.discovered", volume_id=serial, source="nvme-serial", disk=disk)
            return serial
        reasons.append(f"{disk} has no EBS serial (not a Nitro NVMe disk)")
        if imds is not None and ec2 is not None:
            found = volume_id_from_metadata(disk, imds, ec2)
            log.info("volume_id.discovered", volume_id=found, source="metadata", disk=disk)
            return found
        reasons.append("instance metadata not consulted")
    except (OSError, BackupAgentError) as exc:
        reasons.append(str(exc))
    raise VolumeIdUnknown(
        [
            f"storage.volume_id: cannot discover the EBS volume of {root} ({'; '.join(reasons)});"
            " set it in the config"
        ]
    )


def mount_of(root: Path, proc_root: Path = Path("/proc")) -> Mount:
    """The mount holding `root`: the longest mount point that is a prefix of it."""
    return mount_in(root, proc_root / "self" / "mountinfo")


def mount_in(root: Path, mountinfo: Path) -> Mount:
    """`mount_of` reading the given mountinfo file."""
    target = Path(root).resolve()
    best: Mount | None = None
    text = mountinfo.read_text(encoding="utf-8")
    for line in text.splitlines():
        mount = _parse_mountinfo_line(line)
        if mount is None or not target.is_relative_to(mount.mount_point):
            continue
        if best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts):
            best = mount  # later lines are mounted on top of earlier ones
    if best is None:
        raise BackupAgentError(f"no mount holds {root}")
    return best


def _parse_mountinfo_line(line: str) -> Mount | None:
    fields = line.split()
    if "-" not in fields or len(fields) < 7:
        return None
    dash = fields.index("-")
    if len(fields) < dash + 3:
        return None
    return Mount(
        mount_point=Path(_unescape(fields[4])),
        device_number=fields[2],
        fstype=fields[dash + 1],
        source=_unescape(fields[dash + 2]),
    )


def _unescape(text: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), text)


def disk_of(mount: Mount, sys_root: Path = Path("/sys")) -> str:
    """The whole disk under a mount: partitions and single-slave device-mapper resolved."""
    node = sys_root / "dev" / "block" / mount.device_number
    if node.exists():
        name = node.resolve().name
    elif mount.source.startswith("/dev/"):
        name = Path(mount.source).name
    else:
        raise BackupAgentError(
            f"{mount.mount_point} is not on a block device ({mount.fstype} {mount.source})"
        )
    return _whole_disk(name, sys_root, depth=0)


def _whole_disk(name: str, sys_root: Path, depth: int) -> str:
    entry = sys_root / "class" / "block" / name
    if (entry / "partition").exists():
        return entry.resolve().parent.name
    slaves = sys_root / "block" / name / "slaves"
    if depth < 4 and slaves.is_dir():
        below = sorted(p.name for p in slaves.iterdir())
        if len(below) == 1:
            return _whole_disk(below[0], sys_root, depth + 1)
        if below:
            raise BackupAgentError(f"{name} spans several disks ({', '.join(below)})")
    return name


def nvme_volume_id(disk: str, sys_root: Path = Path("/sys")) -> str | None:
    """`vol-…` from an EBS NVMe disk's serial, or None."""
    path = sys_root / "block" / disk / "device" / "serial"
    try:
        serial = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    match = _SERIAL.fullmatch(serial)
    return f"vol-{match.group(1)}" if match else None


def volume_id_from_metadata(disk: str, imds: Imds, ec2: EC2Client) -> str:
    """The attached volume whose EC2 device name matches `disk` (xvdf ↔ sdf)."""
    instance_id = imds.instance_id()
    wanted = _device_key(disk)
    devices = {f"/dev/{_strip_dev(d)}" for d in imds.block_device_mapping().values()}
    candidates = sorted(d for d in devices if _device_key(d) == wanted) or [
        f"/dev/sd{wanted}",
        f"/dev/xvd{wanted}",
    ]
    try:
        volumes = ec2.describe_volumes(
            Filters=[
                {"Name": "attachment.instance-id", "Values": [instance_id]},
                {"Name": "attachment.device", "Values": candidates},
            ]
        )["Volumes"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise BackupAgentError(f"DescribeVolumes for {instance_id}: {exc}") from None
    if len(volumes) != 1:
        raise BackupAgentError(
            f"{len(volumes)} volumes attached to {instance_id} as {', '.join(candidates)}"
        )
    return str(volumes[0]["VolumeId"])


def _strip_dev(name: str) -> str:
    return name.removeprefix("/dev/")


def _device_key(name: str) -> str:
    """`/dev/xvdf`, `sdf`, `xvdf` → `f` (the letters EC2 and the kernel agree on)."""
    base = _strip_dev(name)
    for prefix in ("xvd", "sd", "hd"):
        if base.startswith(prefix):
            return base[len(prefix) :].rstrip("0123456789")
    return base
