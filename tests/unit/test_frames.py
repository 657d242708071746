"""Copies split into zstd frames: written per FRAME_BYTES, read back on every core, in order.

FRAME_BYTES is made small here (the writer reads it at each write) so that copies of a few
hundred KiB hold several frames; the code paths are the ones a 1 GiB copy takes.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DiskFull, IntegrityError
from agent.records import VersionRecord
from agent.restore import copies
from agent.restore.copies import CorruptCopy, verified_chunks
from agent.storage import frames
from agent.storage import volume as volume_module
from agent.storage.frame_budget import FrameBudget
from agent.storage.volume import (
    MAX_WINDOW_BYTES,
    CompressionSettings,
    Expectation,
    StoredCopy,
    Volume,
)
from tests.support.frame_data import chunks_of, data_of, uniform_frames

SETTINGS = CompressionSettings(level=3, threads=1)
FRAME = 64 << 10


def store(volume: Volume, data: bytes, *, known_size: bool = True) -> StoredCopy:
    expect = Expectation(size=len(data)) if known_size else Expectation()
    return volume.write_copy(chunks_of(data), SETTINGS, expect)


def record_of(copy: StoredCopy, size: int | None = None) -> VersionRecord:
    return VersionRecord(
        bucket="b",
        key="k",
        version_token="t:1",
        order_key="o",
        event_name="ObjectCreated:Put",
        event_time="2026-11-01T09:00:00+00:00",
        backup_time="2026-11-01T09:00:00+00:00",
        volume_id="vol-test",
        sha256=copy.sha256,
        size=copy.size if size is None else size,
    )


def scan(copy: StoredCopy, limit: int | None = None) -> list[frames.Frame] | None:
    fd = os.open(copy.path, os.O_RDONLY)
    try:
        return frames.scan(fd, limit=limit, max_window=MAX_WINDOW_BYTES)
    finally:
        os.close(fd)


@pytest.fixture(autouse=True)
def small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_module, "FRAME_BYTES", FRAME)
    uniform_frames(monkeypatch)


def test_a_large_copy_is_written_as_frames_that_each_declare_their_size(volume: Volume) -> None:
    data = data_of(5 * FRAME + 123)
    copy = store(volume, data)
    found = scan(copy, limit=len(data))
    assert found is not None
    assert [f.content_size for f in found] == [FRAME] * 5 + [123]
    assert sum(f.length for f in found) == copy.stored_size
    for frame in found:  # each frame alone is a complete zstd frame with its checksum
        with copy.path.open("rb") as raw:
            raw.seek(frame.offset)
            params = zstandard.get_frame_parameters(raw.read(18))
        assert params.has_checksum and params.content_size == frame.content_size


def test_split_copy_reads_back_identically_through_every_reader(volume: Volume) -> None:
    data = data_of(7 * FRAME + 5)
    copy = store(volume, data)
    assert b"".join(volume.copy_chunks(copy.sha256, len(data))) == data
    with volume.open_copy(copy.sha256) as reader:  # the serial reader reads every frame
        assert reader.read() == data
    volume.verify_copy(copy.sha256, len(data))
    assert b"".join(verified_chunks(volume, record_of(copy))) == data


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command")
def test_zstd_command_reads_a_split_copy(volume: Volume) -> None:
    data = data_of(3 * FRAME + 77)
    copy = store(volume, data)
    done = subprocess.run(["zstd", "-d", "-c", str(copy.path)], capture_output=True, check=True)
    assert done.stdout == data


def test_unknown_size_or_small_copy_stays_one_frame_and_is_read_serially(volume: Volume) -> None:
    data = data_of(3 * FRAME)
    unknown = store(volume, data, known_size=False)
    assert scan(unknown) is None  # one frame (no declared size): not split
    small = store(volume, data_of(FRAME, seed=2))
    assert scan(small) is None
    assert b"".join(volume.copy_chunks(unknown.sha256, len(data))) == data


def test_split_and_whole_copies_of_the_same_bytes_are_the_same_copy(volume: Volume) -> None:
    data = data_of(3 * FRAME + 1)
    split = store(volume, data)
    whole = store(volume, data, known_size=False)
    assert whole.sha256 == split.sha256 and whole.deduplicated


@pytest.mark.parametrize("where", [0.5, 2.5, 4.9])
def test_a_tampered_frame_is_detected(volume: Volume, where: float) -> None:
    data = data_of(5 * FRAME)
    copy = store(volume, data)
    found = scan(copy)
    assert found is not None
    frame = found[int(where)]
    raw = bytearray(copy.path.read_bytes())
    position = frame.offset + int(frame.length * (where % 1))  # inside the frame's blocks
    raw[position] ^= 0x55
    copy.path.chmod(0o640)
    copy.path.write_bytes(bytes(raw))
    with pytest.raises(CorruptCopy):
        b"".join(verified_chunks(volume, record_of(copy)))
    with pytest.raises(IntegrityError):
        volume.verify_copy(copy.sha256, len(data))


def test_frames_declaring_more_than_the_record_are_not_decompressed_ahead(volume: Volume) -> None:
    data = data_of(4 * FRAME)
    copy = store(volume, data)
    assert scan(copy, limit=len(data) - 1) is None  # the serial reader stops at the limit
    with pytest.raises(CorruptCopy, match="expands past"):
        b"".join(verified_chunks(volume, record_of(copy, size=len(data) - 1000)))


def test_a_frame_declaring_too_much_is_read_serially(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_of(3 * FRAME)
    copy = store(volume, data)
    monkeypatch.setattr(frames, "MAX_FRAME_BYTES", FRAME - 1)
    assert scan(copy) is None
    assert b"".join(volume.copy_chunks(copy.sha256, len(data))) == data


def test_a_frame_of_too_many_blocks_is_read_serially(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(volume_module, "FRAME_BYTES", 1 << 20)  # 8+ blocks of 128 KiB
    data = data_of(3 << 20)
    copy = store(volume, data)
    assert scan(copy) is not None
    monkeypatch.setattr(frames, "MIN_BLOCK_BYTES", 1 << 40)  # now at most 4 blocks a frame
    assert scan(copy) is None
    assert b"".join(volume.copy_chunks(copy.sha256, len(data))) == data


def test_a_truncated_split_copy_is_corrupt(volume: Volume) -> None:
    data = data_of(3 * FRAME)
    copy = store(volume, data)
    raw = copy.path.read_bytes()
    copy.path.chmod(0o640)
    copy.path.write_bytes(raw[: len(raw) - 10])
    assert scan(copy) is None
    with pytest.raises(CorruptCopy):
        b"".join(verified_chunks(volume, record_of(copy)))


def test_at_most_workers_plus_one_frames_are_held(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore's reader (`decompress_copy`): frames handed to the workers never run more
    than `workers` ahead of the frame the caller is using."""
    data = data_of(10 * FRAME)
    copy = store(volume, data)
    submitted: list[int] = []
    real_one = frames._decompress_bytes

    def counting(frame: frames.Frame, data: memoryview, max_window: int) -> bytes:
        submitted.append(frame.offset)
        return real_one(frame, data, max_window)

    monkeypatch.setattr(frames, "_decompress_bytes", counting)
    fd = os.open(copy.path, os.O_RDONLY)
    try:
        out = frames.decompress_copy(fd, limit=len(data), workers=2, max_window=MAX_WINDOW_BYTES)
        assert out is not None
        for index, chunk in enumerate(out):
            # frames decompressed or decompressing: the ones handed out and `workers` ahead
            assert len(submitted) <= index + 1 + 2
            assert chunk == data[index * FRAME : (index + 1) * FRAME]
    finally:
        os.close(fd)
    assert len(submitted) == 10


def test_closing_early_leaves_no_thread(volume: Volume) -> None:
    data = data_of(10 * FRAME)
    copy = store(volume, data)
    chunks = volume.copy_chunks(copy.sha256, len(data))
    assert next(chunks) == data[:FRAME]
    chunks.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("frames")]
    # and the next copy may read in parallel again (the one-copy slot was given back)
    assert volume_module._parallel_copy.acquire(blocking=False)
    volume_module._parallel_copy.release()


def test_a_second_copy_read_meanwhile_is_read_serially(volume: Volume) -> None:
    first, second = data_of(4 * FRAME, seed=1), data_of(4 * FRAME, seed=2)
    a, b = store(volume, first), store(volume, second)
    reading = volume.copy_chunks(a.sha256, len(first))
    head = next(reading)  # holds the parallel slot
    assert b"".join(volume.copy_chunks(b.sha256, len(second))) == second
    assert head + b"".join(reading) == first


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 6000),
    frame=st.integers(1, 1500),
    piece=st.integers(1, 2000),
)
def test_any_size_frame_and_chunking_round_trips(
    tmp_path: Path, size: int, frame: int, piece: int
) -> None:
    root = tmp_path / f"v-{size}-{frame}-{piece}"
    root.mkdir()
    volume = Volume(root)
    volume.initialise("vol-h")
    volume.open()
    data = data_of(size, seed=size)
    saved = volume_module.FRAME_BYTES
    volume_module.FRAME_BYTES = frame
    try:  # written and read with this frame size: the parallel reader takes split copies
        copy = volume.write_copy(chunks_of(data, piece), SETTINGS, Expectation(size=size))
        found = scan(copy, limit=size)
        expected_frames = -(-size // frame) if size > frame else 1
        assert (len(found) if found else 1) == expected_frames
        assert b"".join(verified_chunks(volume, record_of(copy))) == data
        with volume.open_copy(copy.sha256) as reader:
            assert reader.read() == data
    finally:
        volume_module.FRAME_BYTES = saved


@pytest.mark.parametrize("split", [True, False])
def test_hashing_in_its_own_thread_verifies_the_same(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    monkeypatch.setattr(copies, "THREAD_FROM_BYTES", 0)  # every copy hashed in a thread
    data = data_of(4 * FRAME + 9)
    copy = store(volume, data, known_size=split)
    assert b"".join(verified_chunks(volume, record_of(copy))) == data
    wrong = dataclasses.replace(record_of(copy), sha256="0" * 64)
    volume.copy_path(wrong.sha256 or "").parent.mkdir(exist_ok=True)
    shutil.copy(copy.path, volume.copy_path(wrong.sha256 or ""))  # same bytes, other name
    with pytest.raises(CorruptCopy, match="hash to"):
        b"".join(verified_chunks(volume, wrong))
    reading = verified_chunks(volume, record_of(copy))
    next(reading)
    reading.close()  # stopped early: the hashing thread is gone too
    assert not [t for t in threading.enumerate() if t.name.startswith(("sha256", "frames"))]


# -- a split copy's frames compress side by side (volume._ParallelFrames) --------------------

PARALLEL = CompressionSettings(level=3, threads=2)


def frame_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("zstd-frame")]


def leftovers(volume: Volume) -> list[str]:
    return [p.name for p in volume.tmp_dir.iterdir()] + [
        p.name for p in volume.objects_dir.rglob("*") if p.is_file()
    ]


def test_frames_are_written_in_order_when_a_later_one_finishes_first(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first frame's compression waits until the second's has finished: the copy still
    holds them in order (and reads back)."""
    real = volume_module._ParallelFrames._compress
    second_done = threading.Event()
    calls: list[int] = []

    def compress(self: Any, buffer: bytearray, size: int) -> bytes:
        calls.append(size)
        if len(calls) == 1:
            assert second_done.wait(timeout=30), "the second frame never compressed"
            return real(self, buffer, size)
        out = real(self, buffer, size)
        second_done.set()
        return out

    monkeypatch.setattr(volume_module._ParallelFrames, "_compress", compress)
    data = data_of(4 * FRAME + 5)
    copy = volume.write_copy(chunks_of(data), PARALLEL, Expectation(size=len(data)))
    found = scan(copy, limit=len(data))
    assert found is not None and [f.content_size for f in found] == [FRAME] * 4 + [5]
    assert b"".join(verified_chunks(volume, record_of(copy))) == data
    assert not frame_threads()


def test_a_failure_compressing_a_frame_surfaces_and_leaves_nothing(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = volume_module._ParallelFrames._compress
    calls: list[int] = []

    def compress(self: Any, buffer: bytearray, size: int) -> bytes:
        calls.append(size)
        if len(calls) == 3:
            raise MemoryError("frame 3")
        return real(self, buffer, size)

    monkeypatch.setattr(volume_module._ParallelFrames, "_compress", compress)
    data = data_of(8 * FRAME)
    with pytest.raises(MemoryError, match="frame 3"):
        volume.write_copy(chunks_of(data), PARALLEL, Expectation(size=len(data)))
    assert leftovers(volume) == []  # no temp file, no copy
    assert not frame_threads()  # the workers are stopped and joined


def test_a_download_failing_after_some_frames_leaves_nothing(volume: Volume) -> None:
    data = data_of(8 * FRAME)

    def failing() -> Iterator[bytes]:
        yield from chunks_of(data[: 5 * FRAME + 100])
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        volume.write_copy(failing(), PARALLEL, Expectation(size=len(data)))
    assert leftovers(volume) == []
    assert not frame_threads()
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_split_copies_read_back_whatever_the_worker_count(volume: Volume, threads: int) -> None:
    data = data_of(7 * FRAME + 1)
    settings = CompressionSettings(level=3, threads=threads)
    copy = volume.write_copy(chunks_of(data, 3 * FRAME + 7), settings, Expectation(len(data)))
    assert b"".join(verified_chunks(volume, record_of(copy))) == data


def test_a_full_disk_while_frames_compress_is_disk_full_and_leaves_nothing(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = volume_module.WritebackAsYouGo.write

    def write_until_full(self: Any, data: bytes) -> int:  # ENOSPC once some frames are out
        if self._written > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(volume_module.WritebackAsYouGo, "write", write_until_full)
    data = data_of(8 * FRAME)
    with pytest.raises(DiskFull):
        volume.write_copy(chunks_of(data), PARALLEL, Expectation(size=len(data)))
    assert leftovers(volume) == []
    assert not frame_threads()


def test_a_split_copy_starts_and_ends_with_smaller_frames(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With frames compressing side by side the first frames double up to FRAME_BYTES (the
    workers start before a whole frame is read) and the last 16-32 MiB go in quarters (they
    end together); one worker writes FRAME_BYTES frames throughout. Read back alike. A size
    of a power of two (1 GiB: the ramp leaves 1 MiB over) ends in quarters too: the rule
    `left <= FRAME_BYTES` came after the last whole frame (the session's review)."""
    monkeypatch.setattr(volume_module, "RAMP_FRAMES", 4)
    monkeypatch.setattr(volume_module, "TAIL_FRAMES", 4)
    ramp = [FRAME // 16, FRAME // 8, FRAME // 4, FRAME // 2]
    quarters = [FRAME // 4] * 4
    for size, settings_, expected in (
        (4 * FRAME + FRAME * 15 // 16, PARALLEL, ramp + [FRAME] * 3 + quarters),
        (5 * FRAME, PARALLEL, ramp + [FRAME] * 3 + quarters + [FRAME // 16]),
        (5 * FRAME, SETTINGS, [FRAME] * 5),
    ):
        data = data_of(size)
        copy = volume.write_copy(chunks_of(data), settings_, Expectation(size=len(data)))
        found = scan(copy, limit=len(data))
        assert found is not None and [f.content_size for f in found] == expected
        assert b"".join(verified_chunks(volume, record_of(copy))) == data
        volume.copy_path(copy.sha256).unlink()


def test_a_write_that_blocks_does_not_stop_the_next_frames_compressing(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first frame's write blocks (dirty pages throttled, a slow volume): the third frame
    is still read and compressed meanwhile. The writes went from the reading thread, so a
    blocked write stopped the reading, the workers ran out of frames and CPUs stood idle."""
    monkeypatch.setattr(volume_module, "FRAME_BUDGET", FrameBudget(3))
    real_write = volume_module.WritebackAsYouGo.write
    real_compress = volume_module._ParallelFrames._compress
    released, third = threading.Event(), threading.Event()
    writes: list[int] = []
    compressed: list[int] = []

    def blocking_write(self: Any, data: bytes) -> int:
        writes.append(len(data))
        if len(writes) == 1:
            released.wait(timeout=30)
        return real_write(self, data)

    def compress(self: Any, buffer: bytearray, size: int) -> bytes:
        compressed.append(size)
        if len(compressed) >= 3 and not released.is_set():  # two workers append at once
            third.set()
        return real_compress(self, buffer, size)

    monkeypatch.setattr(volume_module.WritebackAsYouGo, "write", blocking_write)
    monkeypatch.setattr(volume_module._ParallelFrames, "_compress", compress)
    data = data_of(6 * FRAME)
    copies: list[StoredCopy] = []
    writer = threading.Thread(
        target=lambda: copies.append(
            volume.write_copy(chunks_of(data), PARALLEL, Expectation(size=len(data)))
        )
    )
    writer.start()
    try:
        overlapped = third.wait(timeout=10)
    finally:
        released.set()
        writer.join(timeout=60)
    assert overlapped, f"{len(compressed)} frames compressed while the first write blocked"
    assert copies and b"".join(verified_chunks(volume, record_of(copies[0]))) == data
    assert not frame_threads()


def test_a_full_disk_is_said_even_when_the_download_fails_first(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A frame's write fails (ENOSPC) in the writer's thread, then the download fails before
    the caller next waits for a write: the download's error unwinds, and the full disk is
    logged, not lost under it."""
    monkeypatch.setattr(volume_module, "FRAME_BUDGET", FrameBudget(3))

    gate = threading.Event()  # the write fails only once the download is failing

    def no_space(self: Any, data: bytes) -> int:
        gate.wait(timeout=30)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(volume_module.WritebackAsYouGo, "write", no_space)
    data = data_of(8 * FRAME)

    def failing() -> Iterator[bytes]:
        yield from chunks_of(data[: 3 * FRAME + 100])
        gate.set()
        raise ConnectionResetError("peer went away")

    with (
        structlog.testing.capture_logs() as logs,
        pytest.raises(ConnectionResetError),
    ):
        volume.write_copy(failing(), PARALLEL, Expectation(size=len(data)))
    said = [e for e in logs if e["event"] == "storage.frame_write_failed"]
    assert said and "No space" in said[0]["error"]
    assert leftovers(volume) == []
    assert not frame_threads()


class NotingOs:
    """`os` for frames.py, noting in `events` every pread as ("read", offset, length) and,
    with `advice`, every posix_fadvise as ("ahead", offset, length) instead of making it
    (each must be POSIX_FADV_WILLNEED); everything else is the real `os`."""

    def __init__(self, *, advice: bool = False) -> None:
        self.events: list[tuple[str, int, int]] = []
        self.advice = advice

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        self.events.append(("read", offset, length))
        return os.pread(fd, length, offset)

    def posix_fadvise(self, fd: int, offset: int, length: int, advice: int) -> None:
        if not self.advice:
            return os.posix_fadvise(fd, offset, length, advice)
        assert advice == os.POSIX_FADV_WILLNEED
        self.events.append(("ahead", offset, length))
        return None


def test_the_kernel_is_asked_to_read_frames_ahead_of_the_walk(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel was asked (POSIX_FADV_WILLNEED) for every frame before the walk reads it,
    in order and without a gap, so a copy not in the page cache is read while the frames
    before it decompress. Incompressible data, so frames are longer than half the window the
    walk keeps asked for ahead."""
    data = random.Random(7).randbytes(10 * FRAME)
    copy = store(volume, data)
    noting = NotingOs(advice=True)
    events = noting.events
    monkeypatch.setattr(frames, "os", noting)
    monkeypatch.setattr(frames, "AHEAD_BYTES", FRAME)  # a tenth of the copy
    fd = os.open(copy.path, os.O_RDONLY)
    try:
        out = frames.decompress_copy(fd, limit=len(data), workers=2, max_window=MAX_WINDOW_BYTES)
        assert out is not None
        assert b"".join(out) == data
    finally:
        os.close(fd)

    advised_to = 0  # everything below this offset has been asked for ahead
    for kind, offset, length in events:
        if kind == "ahead":
            assert offset <= advised_to  # in order, no gap
            advised_to = max(advised_to, offset + length)
        else:
            assert offset < advised_to, (offset, advised_to)  # asked for before it is read
    assert advised_to > 9 * FRAME  # asked again and again, up to the last frame


def test_the_first_frame_decompresses_before_the_copy_is_walked_to_its_end(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`scan` walked every block header of the copy (read it all from the disk) before the
    first frame started; a restore now walks the frames as the workers reach them."""
    data = data_of(10 * FRAME)
    copy = store(volume, data)
    found = scan(copy)
    assert found is not None and len(found) == 10
    noting = NotingOs()
    monkeypatch.setattr(frames, "os", noting)
    chunks = volume.copy_chunks(copy.sha256, len(data))
    assert next(chunks) == data[:FRAME]
    walked = max(offset for kind, offset, _ in noting.events if kind == "read")
    assert walked < found[4].offset  # the first frame, `workers` more, and the next header
    assert b"".join(chunks) == data[FRAME:]


def _hand_made_copy(volume: Volume, parts: list[bytes]) -> tuple[str, bytes]:
    """A copy of `parts[0] + parts[1] + ...`: every part a frame declaring its size, but the
    third, which declares none (as a streaming compressor writes it)."""
    data = b"".join(parts)
    sized = zstandard.ZstdCompressor(level=3, write_checksum=True)
    stream = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=False)
    stored = b""
    for index, part in enumerate(parts):
        if index == 2:
            unsized = stream.compressobj()
            stored += unsized.compress(part) + unsized.flush()
        else:
            stored += sized.compress(part)
    sha256 = hashlib.sha256(data).hexdigest()
    path = volume.copy_path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(stored)
    return sha256, data


def test_a_later_frame_that_cannot_go_in_parallel_is_read_serially_from_there(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [data_of(FRAME, seed=seed) for seed in range(5)]
    sha256, data = _hand_made_copy(volume, parts)
    in_parallel: list[int] = []
    real_one = frames._decompress_bytes

    def noting(frame: frames.Frame, data: memoryview, max_window: int) -> bytes:
        in_parallel.append(frame.offset)
        return real_one(frame, data, max_window)

    monkeypatch.setattr(frames, "_decompress_bytes", noting)
    assert b"".join(volume.copy_chunks(sha256, len(data))) == data
    assert len(in_parallel) == 2  # the two frames before the one without a size
    copy = StoredCopy(sha256, len(data), 0, volume.copy_path(sha256), deduplicated=False)
    assert b"".join(verified_chunks(volume, record_of(copy))) == data
    assert not [t for t in threading.enumerate() if t.name.startswith("frames")]
