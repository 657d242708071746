"""VolumeCheck and Backoff: when the consumer may take work, and how often it looks again."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.pipeline.pause import Backoff, VolumeCheck, size_text
from agent.storage.volume import Volume

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
