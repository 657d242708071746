"""Auto-grow of the backup volume (`storage.auto_grow`, off by default; issue 17).

Two halves, two privileges:

* **the agent** (unprivileged): `VolumeGrower.step()`, every `auto_grow.check_every`. At
  `used_percent` it calls ``ec2:ModifyVolume`` on the backup volume (size + `step_percent`,
  at least + `min_step_gib`, never past `max_size_gib`), polls
  ``DescribeVolumesModifications`` and, once the modification is `optimizing` or
  `completed` (EBS: the new size is usable from `optimizing`), writes the request file
  `grow-request` into its state directory. It then waits for the filesystem to show the
  new size.
* **root**: `backup-agent-grow.path` watches that file and starts
  `backup-agent-grow.service`, which runs `backup-agent grow-filesystem`
  (`grow_filesystem` below): the command comes from the root-owned config.yaml
  (`storage.auto_grow.command`) or from the filesystem type of the mount (`resize2fs
  DEVICE` for ext4, `xfs_growfs MOUNTPOINT` for XFS) — never from the request file, whose
  content is untrusted and only removed.

EBS's rules, checked before every ModifyVolume: a modification only after the previous one
is `completed` (or `failed`), and none within `cooldown` (6 h, EBS's long-documented rate;
today's limit of four in a rolling 24 h is looser) of the previous one's start. Every
refusal (the cap, the rate, an API error such as a quota) is an alert with its reason,
once per cause, and never an exception out of `step()`.

States (`GrowState`): IDLE → MODIFYING (ModifyVolume accepted) → FILESYSTEM (request
written, waiting for the filesystem; alerted once after 30 min without it) → IDLE (grown:
alert). A `failed` modification or an API error returns to IDLE with the cause alerted. The
state lives in memory: after a restart the machine starts IDLE, and a modification already
made only counts toward the cooldown.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent.aws import error_code
from agent.config import AutoGrowConfig
from agent.errors import PermanentError
from agent.storage.encryption import AlertHook
from agent.storage.volume import atomic_write_bytes

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

log = structlog.get_logger("agent.grow")

GiB = 1 << 30
REQUEST_NAME = "grow-request"
ERROR_RETRY = timedelta(hours=1)  # after an API error, ask again no sooner than this
FILESYSTEM_PATIENCE = timedelta(minutes=30)  # then: is backup-agent-grow.path enabled?
USABLE_STATES = ("optimizing", "completed")


class GrowState(enum.Enum):
    IDLE = "idle"
    MODIFYING = "modifying"
    FILESYSTEM = "filesystem"


@dataclass(frozen=True, slots=True)
class Modification:
    """The most recent modification of a volume, as DescribeVolumesModifications says."""

    state: str
    target_gib: int
    started: datetime | None

    @classmethod
    def latest(cls, answer: Sequence[Any]) -> Modification | None:
        """The newest entry (real EBS returns only the most recent; moto returns all)."""
        found = [
            cls(
                str(m.get("ModificationState", "")),
                int(m.get("TargetSize") or 0),
                m.get("StartTime"),
            )
            for m in answer
        ]
        if not found:
            return None
        return max(found, key=lambda m: m.started.timestamp() if m.started else 0.0)


def target_size(current_gib: int, settings: AutoGrowConfig) -> int:
    """+step_percent, at least +min_step_gib, at most max_size_gib."""
    wanted = max(
        math.ceil(current_gib * (1 + settings.step_percent / 100)),
        current_gib + settings.min_step_gib,
    )
    return min(wanted, settings.max_size_gib)


class VolumeGrower:
    def __init__(
        self,
        ec2: EC2Client,
        settings: AutoGrowConfig,
        *,
        volume_id: Callable[[], str],
        root: Path,
        state_dir: Path,
        alert: AlertHook,
        clock: Callable[[], datetime],
        usage: Callable[[Path], tuple[int, int]] | None = None,  # (total, used) bytes
    ) -> None:
        self.ec2 = ec2
        self.settings = settings
        self.volume_id = volume_id
        self.root = root
        self.request = state_dir / REQUEST_NAME
        self.alert = alert
        self.clock = clock
        self.usage = usage or _disk_usage
        self.state = GrowState.IDLE
        self.target_gib: int | None = None
        self._fs_total_before: int | None = None
        self._requested_at: datetime | None = None
        self._last_error_at: datetime | None = None
        self._alerted: str | None = None  # the last refusal alerted, so it goes out once

    # -- what others ask ------------------------------------------------------------------

    def can_grow(self) -> bool:
        """Could a grow make room soon? False when off, capped, in the cooldown or after an
        error (retention under pressure then goes ahead)."""
        if not self.settings.enabled:
            return False
        if self.state is not GrowState.IDLE:
            return True  # under way
        return self._alerted is None

    # -- the state machine ----------------------------------------------------------------

    def step(self) -> GrowState:
        """One check; never raises (an error is an alert, and the next check tries again)."""
        if not self.settings.enabled:
            return self.state
        try:
            if self.state is GrowState.MODIFYING:
                self._poll()
            elif self.state is GrowState.FILESYSTEM:
                self._wait_for_filesystem()
            else:
                self._maybe_grow()
        except botocore.exceptions.BotoCoreError as exc:
            self._failed("ec2", str(exc))
        except botocore.exceptions.ClientError as exc:
            self._failed(error_code(exc), str(exc))
        except OSError as exc:
            self._failed("state directory", str(exc))
        return self.state

    def _maybe_grow(self) -> None:
        total, used = self.usage(self.root)
        percent = 100.0 * used / total if total else 0.0
        if percent < self.settings.used_percent:
            self._alerted = None  # below the threshold again: a new crossing alerts anew
            return
        now = self.clock()
        if self._last_error_at and now - self._last_error_at < ERROR_RETRY:
            return
        volume = self.volume_id()
        current = self._size(volume)
        if current >= self.settings.max_size_gib:
            self._refused(
                "cap",
                f"{volume} is {current} GiB, at storage.auto_grow.max_size_gib"
                f" ({self.settings.max_size_gib} GiB): it will not be grown further",
            )
            return
        latest = self._latest(volume)
        if latest is not None and latest.state in ("modifying", "optimizing"):
            self._refused("busy", f"{volume}: a modification is still {latest.state}")
            return
        if latest is not None and latest.started is not None:
            ready_at = latest.started + self.settings.cooldown
            if now < ready_at:
                self._refused(
                    "cooldown",
                    f"{volume} was last modified at {latest.started.isoformat()}; EBS allows"
                    f" the next modification from {ready_at.isoformat()}"
                    " (storage.auto_grow.cooldown)",
                )
                return
        target = target_size(current, self.settings)
        self.ec2.modify_volume(VolumeId=volume, Size=target)
        self.state, self.target_gib, self._alerted = GrowState.MODIFYING, target, None
        self._fs_total_before = total
        log.warning("grow.requested", volume_id=volume, size_gib=current, target_gib=target)
        self.alert(
            "growing the backup volume",
            f"{volume}: {percent:.1f}% used; ModifyVolume {current} → {target} GiB",
        )
        self._poll()

    def _poll(self) -> None:
        volume = self.volume_id()
        latest = self._latest(volume)
        if latest is None or latest.state == "modifying":
            return
        if latest.state == "failed":
            self.state = GrowState.IDLE
            self._failed("failed", f"{volume}: the modification to {self.target_gib} GiB failed")
            return
        if latest.state in USABLE_STATES:
            document = {
                "volume_id": volume,
                "target_gib": self.target_gib,
                "requested_at": self.clock().isoformat(),
            }
            self.request.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.request, json.dumps(document).encode())
            self.state, self._requested_at = GrowState.FILESYSTEM, self.clock()
            log.info("grow.filesystem_requested", volume_id=volume, request=str(self.request))
            self._wait_for_filesystem()

    def _wait_for_filesystem(self) -> None:
        total, _ = self.usage(self.root)
        if self._fs_total_before is not None and total <= self._fs_total_before:
            # the root unit has not grown it yet (the request file says so)
            waited = self.clock() - (self._requested_at or self.clock())
            if waited >= FILESYSTEM_PATIENCE:
                self._refused(
                    "filesystem",
                    f"{self.root}: the volume is {self.target_gib} GiB but the filesystem has"
                    f" not grown in {waited}; see systemctl status backup-agent-grow.path"
                    " backup-agent-grow.service",
                )
            return
        self.state = GrowState.IDLE
        log.warning("grow.done", root=str(self.root), total_bytes=total)
        self.alert(
            "backup volume grown",
            f"{self.root}: the filesystem is now {total / GiB:.1f} GiB"
            f" (volume {self.target_gib} GiB)",
        )

    # -- EC2 --------------------------------------------------------------------------------

    def _size(self, volume: str) -> int:
        answer = self.ec2.describe_volumes(VolumeIds=[volume])
        return int(answer["Volumes"][0]["Size"])

    def _latest(self, volume: str) -> Modification | None:
        try:
            answer = self.ec2.describe_volumes_modifications(VolumeIds=[volume])
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "InvalidVolumeModification.NotFound":
                return None  # never modified
            raise
        return Modification.latest(answer.get("VolumesModifications", []))

    # -- alerts -----------------------------------------------------------------------------

    def _refused(self, cause: str, detail: str) -> None:
        if self._alerted != cause:
            self._alerted = cause
            log.warning("grow.refused", cause=cause, detail=detail)
            self.alert(f"backup volume cannot grow ({cause})", detail)

    def _failed(self, cause: str, detail: str) -> None:
        self.state = GrowState.IDLE
        self._last_error_at = self.clock()
        self._alerted = cause
        log.error("grow.failed", cause=cause, detail=detail)
        self.alert(f"backup volume grow failed ({cause})", detail)


def _disk_usage(root: Path) -> tuple[int, int]:
    usage = shutil.disk_usage(root)
    return usage.total, usage.used


# -- the root half: `backup-agent grow-filesystem` ----------------------------------------


def mount_of(root: Path, mounts: str) -> tuple[str, str, str]:
    """(device, mount point, filesystem type) of the mount holding `root`, from the text
    of /proc/self/mounts (the longest mount point that is `root` or above it)."""
    best: tuple[str, str, str] | None = None
    target = str(root)
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, point, fstype = fields[0], fields[1].replace("\\040", " "), fields[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[1])):
            best = (device, point, fstype)
    if best is None:
        raise PermanentError(f"no mount holds {root}")
    return best


def grow_command(root: Path, mounts: str, configured: list[str] | None) -> list[str]:
    """The configured command, else resize2fs (ext4) or xfs_growfs (XFS) for the mount."""
    if configured:
        return list(configured)
    device, point, fstype = mount_of(root, mounts)
    if fstype == "ext4":
        return ["resize2fs", device]
    if fstype == "xfs":
        return ["xfs_growfs", point]
    raise PermanentError(
        f"{point} is {fstype}: set storage.auto_grow.command to the command that grows it"
    )


def trusted_config(path: Path) -> None:
    """The config the command comes from must be root's and writable by root alone."""
    info = path.stat()
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise PermanentError(
            f"{path} must be owned by root and not group/world-writable: the grow command"
            " it names runs as root"
        )


def grow_filesystem(
    root: Path,
    configured: list[str] | None,
    *,
    request: Path,
    mounts: str,
    run: Callable[[list[str]], int] | None = None,
) -> list[str]:
    """Run the grow command; remove the request (whatever it says: it is not read). Returns
    the command run; PermanentError when it failed."""
    command = grow_command(root, mounts, configured)
    runner = run or _run
    code = runner(command)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(request)
    if code != 0:
        raise PermanentError(f"{' '.join(command)} exited with {code}")
    log.warning("grow.filesystem_grown", command=command, root=str(root))
    return command


def _run(command: list[str]) -> int:
    return subprocess.run(command, check=False).returncode  # argv from root's config
