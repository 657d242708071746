"""Is the backup volume encrypted? Checked at start-up, warned and alerted when it is not.

The copy on the volume is as sensitive as the buckets it mirrors. An unencrypted EBS volume
leaks it through every snapshot, every volume detached and attached elsewhere, and every
AMI made from the instance. The volume id comes from `storage.volume_id` or, on Nitro
instances, from the NVMe serial number of the device mounted at the backup root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.exceptions
import structlog

from agent.aws import error_code
from agent.errors import BackupAgentError
from agent.storage.volume_id import disk_of, mount_in, nvme_volume_id

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = structlog.get_logger("agent.encryption")

AlertHook = Callable[[str, str], None]
"""alert(subject, detail): the alerts feature plugs in here."""


@dataclass(frozen=True)
class VolumeEncryption:
    volume_id: str
    encrypted: bool | None  # None: could not be checked
    kms_key_id: str | None = None
    error: str | None = None


def discover_volume_id(
    root: Path,
    *,
    mountinfo: Path = Path("/proc/self/mountinfo"),
    sys_block: Path = Path("/sys/block"),
) -> str | None:
    """The EBS volume id behind `root` from its NVMe serial, or None.

    See agent/storage/volume_id.py.
    """
    sys_root = sys_block.parent
    try:
        return nvme_volume_id(disk_of(mount_in(root, mountinfo), sys_root), sys_root)
    except (OSError, BackupAgentError):
        return None


def check_volume(ec2: EC2Client, volume_id: str) -> VolumeEncryption:
    try:
        volumes = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        return VolumeEncryption(volume_id, None, error=f"{error_code(exc)}: {exc}")
    if not volumes:
        return VolumeEncryption(volume_id, None, error="no such volume")
    volume = volumes[0]
    return VolumeEncryption(volume_id, bool(volume.get("Encrypted")), volume.get("KmsKeyId"))


def check_at_startup(
    ec2: Callable[[], EC2Client],
    volume_id: str | None,
    root: Path,
    alert: AlertHook | None = None,
) -> VolumeEncryption | None:
    """Log (and alert) the encryption state of the backup volume; never raises. `ec2`
    makes the client, called only once there is a volume to ask about (building one costs
    ~0.13 CPU-s, for nothing on a volume whose id is unknown)."""
    volume_id = volume_id or discover_volume_id(root)
    if volume_id is None:
        log.info("volume.encryption_not_checked", reason="EBS volume id unknown", root=str(root))
        return None
    try:
        client = ec2()
    except Exception:  # a start-up check must never stop the agent
        log.exception("volume.encryption_check_failed")
        return None
    result = check_volume(client, volume_id)
    if result.encrypted is None:
        log.warning("volume.encryption_unknown", volume_id=volume_id, error=result.error)
    elif result.encrypted:
        log.info("volume.encrypted", volume_id=volume_id, kms_key_id=result.kms_key_id)
    else:
        log.warning(
            "volume.unencrypted",
            volume_id=volume_id,
            root=str(root),
            hint="copy to an encrypted volume: snapshot, copy-snapshot --encrypted, new volume",
        )
        if alert is not None:
            try:
                alert(
                    "backup volume is not encrypted",
                    f"EBS volume {volume_id} at {root} holds backup copies unencrypted.",
                )
            except Exception:  # an alert failure must not stop the agent
                log.exception("volume.alert_failed")
    return result
