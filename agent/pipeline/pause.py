"""Low space and a missing volume: when the consumer stops receiving, and when it starts again.

Every receive counts toward the queue's `maxReceiveCount`, so a consumer that keeps receiving
while it cannot write walks every waiting message into the dead-letter queue. Instead the
consumer asks `VolumeCheck` before each receive and after a write fails for want of space or
volume, and pauses (docs/runbooks.md, "The disk is full"):

* **pause** when the volume is not ready (no marker: unmounted, not initialised), when it
  is mounted read-only (the kernel remounts ext4 read-only after an error), when its free
  space is at or below `storage.min_free_bytes` (the floor), when its free inodes are at or
  below `INODE_FLOOR` (each copy needs one: a volume of small objects can run out of inodes
  with bytes to spare), when a write met `DiskFull` (the pre-write room check or a real
  ENOSPC) with less than `storage.resume_headroom_bytes` free above the floor, or when a
  write failed with EROFS or EIO and a probe write (`Volume.probe_write`) fails too;
* **hold back** one message instead when a write met `DiskFull` while at least
  `resume_headroom_bytes` remain above the floor: the volume has room, that one object is
  larger than the room. It is given back with a long visibility (`storage.hold_back`,
  doubled per receive) and smaller objects go on;
* **resume** when the volume is ready, writable, at least `resume_headroom_bytes` are free
  above the floor and at least `INODE_RESUME` inodes are free: the gap between the floor and
  that is the hysteresis that keeps a volume at the floor from pausing and resuming every few
  seconds. After a pause for a failed write, resuming also needs a probe write to succeed.

While paused the volume is checked again after 2 s, 4 s, 8 s … up to
`storage.pause_recheck_max` (`Backoff`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.errors import VolumeNotReady
from agent.storage.volume import Volume

# Free inodes (statvfs f_favail) at or below which the consumer pauses, and from which it
# resumes: every copy takes one inode, a temp file one more while it is written. Fixed, not
# settings: a few thousand inodes are nothing on any volume, and a volume that runs out of
# them needs an operator (docs/runbooks.md) whatever the number. A filesystem that reports
# no inode count (f_files 0: btrfs, XFS can too) has no such limit.
INODE_FLOOR = 1024
INODE_RESUME = 4096


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `VolumeCheck.check` found: may the consumer take work, and if not, why."""

    ok: bool
    reason: str = ""  # empty when ok
    free_bytes: int | None = None  # None when the volume could not be measured
    headroom: int | None = None  # free bytes above the floor (negative below it)
    # not ok for want of bytes (at the floor, or short of the resume headroom) and for no
    # other reason: what retention under pressure can answer (lifecycle/pressure.py)
    for_bytes: bool = False


@dataclass(frozen=True, slots=True)
class HeldBack:
    """A message given back for later: its object did not fit in the room left."""

    message_id: str
    bucket: str
    key: str
    size: int | None  # None: the event had no size (the copy met ENOSPC)
    free_bytes: int | None
    headroom: int | None
    hold_seconds: int
    receive_count: int
    max_receive_count: int


class PauseListener(Protocol):
    """Told about each pause, resume and held-back message (monitoring alerts on them)."""

    def on_paused(self, verdict: Verdict) -> None: ...

    def on_resumed(self, verdict: Verdict, paused_seconds: float) -> None: ...

    def on_held_back(self, held: HeldBack) -> None: ...


class NoListener:
    def on_paused(self, verdict: Verdict) -> None:
        pass

    def on_resumed(self, verdict: Verdict, paused_seconds: float) -> None:
        pass

    def on_held_back(self, held: HeldBack) -> None:
        pass


def size_text(value: int) -> str:
    """Bytes for a reader: ``512 B``, ``3.0 MiB``, ``1.5 GiB``."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if abs(value) >= 1 << shift:
            return f"{value / (1 << shift):.1f} {unit}"
    return f"{value} B"


class VolumeCheck:
    """Is the backup volume ready, and is there room above its floor? Cheap: a stat and a
    statvfs, so the consumer asks before every receive."""

    def __init__(
        self,
        volume: Volume,
        *,
        resume_headroom: int,
        free_bytes: Callable[[Path], int] | None = None,
        statvfs: Callable[[Path], os.statvfs_result] = os.statvfs,
    ) -> None:
        self.volume = volume
        self.resume_headroom = resume_headroom
        self._statvfs = statvfs  # a seam: tests set the read-only flag and the inode counts
        self._free_bytes = free_bytes

    @property
    def floor(self) -> int:
        return self.volume.min_free_bytes

    def check(self, *, to_resume: bool = False, probe: bool = False) -> Verdict:
        """May work go on? `to_resume`: the stricter test (room above the floor of at least
        `resume_headroom`, `INODE_RESUME` inodes) for resuming, and for telling "nearly
        full" from "this one object is too large" after a DiskFull. `probe`: also write,
        fsync and remove a small file (after a write failed with EROFS or EIO: only a
        write tells whether writes work again)."""
        root = self.volume.root
        try:
            self.volume.ensure_ready()
        except VolumeNotReady as exc:
            return Verdict(False, f"backup volume not ready: {exc}")
        except OSError as exc:  # the marker's stat met EIO, EACCES: a reason, not a crash
            return Verdict(False, f"backup volume {root} unreadable: {exc}")
        try:
            found = self._statvfs(root)
            measured = self._free_bytes
            free = measured(root) if measured else found.f_bavail * found.f_frsize
        except OSError as exc:
            return Verdict(False, f"backup volume {root} unreadable: {exc}")
        headroom = free - self.floor
        if found.f_flag & os.ST_RDONLY:
            return Verdict(
                False,
                f"backup volume {root} is mounted read-only (the kernel remounts a filesystem"
                " read-only after an error: see `dmesg`)",
                free,
                headroom,
            )
        if headroom <= 0:
            return Verdict(
                False,
                f"backup volume {self.volume.root} has {size_text(free)} free, at or below"
                f" the {size_text(self.floor)} floor (storage.min_free_bytes)",
                free,
                headroom,
                for_bytes=True,
            )
        if to_resume and headroom < self.resume_headroom:
            return Verdict(
                False,
                f"backup volume {self.volume.root} has {size_text(free)} free, less than"
                f" the floor {size_text(self.floor)} plus {size_text(self.resume_headroom)}"
                " (storage.resume_headroom_bytes)",
                free,
                headroom,
                for_bytes=True,
            )
        inodes = found.f_favail if found.f_files > 0 else None
        if inodes is not None and (inodes <= INODE_FLOOR or (to_resume and inodes < INODE_RESUME)):
            wanted = f"at or below {INODE_FLOOR}"
            if inodes > INODE_FLOOR:
                wanted = f"fewer than the {INODE_RESUME} a pause ends with"
            return Verdict(
                False,
                f"backup volume {root} has {inodes} free inodes, {wanted}: each copy needs"
                " one (a volume of many small objects; docs/runbooks.md)",
                free,
                headroom,
            )
        if probe:
            try:
                self.volume.probe_write()
            except OSError as exc:
                reason = f"backup volume {root} cannot be written: {exc}"
                return Verdict(False, reason, free, headroom)
        return Verdict(True, "", free, headroom)


class Backoff:
    """Seconds to wait before the next check: `first`, doubling, at most `maximum`."""

    def __init__(self, first: float = 2.0, maximum: float = 60.0) -> None:
        self.first = min(first, maximum)
        self.maximum = maximum
        self._next = self.first

    def reset(self) -> None:
        self._next = self.first

    def next(self) -> float:
        value = self._next
        self._next = min(self.maximum, self._next * 2)
        return value
