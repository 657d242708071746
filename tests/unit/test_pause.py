"""VolumeCheck and Backoff: when the consumer may take work, and how often it looks again."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.pipeline.pause import INODE_FLOOR, INODE_RESUME, Backoff, VolumeCheck, size_text
from agent.storage.volume import TEMP_NAME, Volume

MiB = 1 << 20


def check_with(volume: Volume, free: int, resume: int = 8 * MiB) -> VolumeCheck:
    return VolumeCheck(volume, resume_headroom=resume, free_bytes=lambda _root: free)


@pytest.fixture
def floored(backup_root: Path) -> Volume:
    volume = Volume(backup_root, min_free_bytes=4 * MiB)
    volume.initialise("vol-pause")
    return volume


def test_a_volume_without_its_marker_is_not_ready(backup_root):
    verdict = check_with(Volume(backup_root), free=1 << 40).check()
    assert not verdict.ok
    assert verdict.reason.startswith("backup volume not ready:")
    assert "init-volume" in verdict.reason
    assert verdict.free_bytes is None


def test_at_or_below_the_floor_there_is_no_room(floored):
    for free in (0, 4 * MiB):
        verdict = check_with(floored, free).check()
        assert not verdict.ok
        assert "at or below the 4.0 MiB floor (storage.min_free_bytes)" in verdict.reason
        assert verdict.free_bytes == free and verdict.headroom == free - 4 * MiB


def test_between_the_floor_and_the_resume_headroom_work_goes_on_but_a_pause_does_not_end(floored):
    check = check_with(floored, free=6 * MiB)
    assert check.check().ok
    verdict = check.check(to_resume=True)
    assert not verdict.ok
    assert "plus 8.0 MiB (storage.resume_headroom_bytes)" in verdict.reason
    assert verdict.headroom == 2 * MiB


def test_with_the_resume_headroom_free_above_the_floor_a_pause_ends(floored):
    verdict = check_with(floored, free=12 * MiB).check(to_resume=True)
    assert verdict.ok and verdict.reason == ""
    assert (verdict.free_bytes, verdict.headroom) == (12 * MiB, 8 * MiB)


def test_an_unreadable_volume_is_a_reason_to_pause(floored):
    def unreadable(_root: Path) -> int:
        raise OSError(5, "Input/output error")

    verdict = VolumeCheck(floored, resume_headroom=0, free_bytes=unreadable).check()
    assert not verdict.ok and "unreadable" in verdict.reason


def test_the_real_free_space_is_read_from_the_filesystem(floored):
    verdict = VolumeCheck(floored, resume_headroom=0).check()
    assert verdict.free_bytes is not None and verdict.free_bytes > 0


def test_backoff_doubles_from_two_seconds_up_to_its_maximum_and_resets():
    backoff = Backoff(2.0, 60.0)
    assert [backoff.next() for _ in range(7)] == [2, 4, 8, 16, 32, 60, 60]
    backoff.reset()
    assert backoff.next() == 2
    assert Backoff(2.0, 1.0).next() == 1.0  # a maximum below 2 s is the first wait too


def test_sizes_read_as_people_write_them():
    assert [size_text(n) for n in (512, 3 * MiB, 3 << 29, -MiB)] == [
        "512 B",
        "3.0 MiB",
        "1.5 GiB",
        "-1.0 MiB",
    ]


def filesystem(*, read_only: bool = False, files: int = 1 << 20, free_inodes: int = 1 << 19):
    """A statvfs answer: 1 GiB free in 4 KiB blocks, the flag and inode counts given."""

    def statvfs(_root: Path) -> os.statvfs_result:
        flag = os.ST_RDONLY if read_only else 0
        blocks = (1 << 30) // 4096
        return os.statvfs_result(
            (4096, 4096, 2 * blocks, blocks, blocks, files, free_inodes, free_inodes, flag, 255)
        )

    return statvfs


def test_a_volume_mounted_read_only_is_a_reason_to_pause(floored):
    """ext4 remounts itself read-only after an error (errors=remount-ro): every write would
    fail with EROFS and every message walk to the dead-letter queue (review, 2026-12-02)."""
    check = VolumeCheck(floored, resume_headroom=0, statvfs=filesystem(read_only=True))
    verdict = check.check()
    assert not verdict.ok and "is mounted read-only" in verdict.reason
    assert verdict.free_bytes == 1 << 30


def test_a_volume_out_of_inodes_pauses_with_bytes_to_spare(floored):
    """Small objects can use up a volume's inodes first (ext4: one per 16 KiB by default):
    each write then fails with ENOSPC while bytes are free, and was held back as too big."""
    at_floor = VolumeCheck(floored, resume_headroom=0, statvfs=filesystem(free_inodes=INODE_FLOOR))
    verdict = at_floor.check()
    assert not verdict.ok
    assert f"has {INODE_FLOOR} free inodes, at or below {INODE_FLOOR}" in verdict.reason
    between = VolumeCheck(
        floored, resume_headroom=0, statvfs=filesystem(free_inodes=INODE_RESUME - 1)
    )
    assert between.check().ok  # work goes on above the floor
    resume = between.check(to_resume=True)
    assert (
        not resume.ok and f"fewer than the {INODE_RESUME}" in resume.reason
    )  # a pause does not end
    enough = VolumeCheck(floored, resume_headroom=0, statvfs=filesystem(free_inodes=INODE_RESUME))
    assert enough.check(to_resume=True).ok


def test_a_filesystem_without_an_inode_count_has_no_inode_floor(floored):
    # f_files 0: btrfs (and XFS can) allocate inodes as needed
    check = VolumeCheck(floored, resume_headroom=0, statvfs=filesystem(files=0, free_inodes=0))
    assert check.check(to_resume=True).ok


def test_a_probe_write_that_fails_is_a_reason_to_pause(floored, monkeypatch):
    def refused() -> None:
        raise OSError(errno.EIO, "Input/output error")

    check = VolumeCheck(floored, resume_headroom=0)
    assert check.check(probe=True).ok  # the real probe: the test's filesystem takes writes
    monkeypatch.setattr(floored, "probe_write", refused)
    assert check.check().ok  # no probe asked: not written
    verdict = check.check(probe=True)
    assert not verdict.ok
    assert (
        verdict.reason
        == f"backup volume {floored.root} cannot be written: [Errno 5] Input/output error"
    )


def test_the_probe_write_leaves_nothing_and_a_crash_leaves_what_start_up_removes(
    floored, monkeypatch
):
    floored.probe_write()
    assert list(floored.tmp_dir.iterdir()) == []
    written: list[str] = []
    real_fsync = os.fsync

    def crash(fd: int) -> None:
        written.extend(os.listdir(floored.tmp_dir))
        real_fsync(fd)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="Input/output error"):
        floored.probe_write()
    assert len(written) == 1 and TEMP_NAME.fullmatch(written[0])  # start-up's sweep takes it
    assert list(floored.tmp_dir.iterdir()) == []  # removed after the failed fsync too


def test_a_marker_that_cannot_be_looked_at_is_a_reason_to_pause_not_a_crash(floored, monkeypatch):
    """Path.is_file raises what is not "absent" (EIO, EACCES): the receiver thread, which
    asks before every receive, died of it and the daemon with it (review, 2026-12-02)."""

    def failing(_volume: Volume) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(Volume, "ensure_ready", failing)
    verdict = VolumeCheck(floored, resume_headroom=0).check()
    assert not verdict.ok and verdict.reason.endswith("unreadable: [Errno 5] Input/output error")
