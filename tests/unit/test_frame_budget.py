"""The process-wide frame budget: large copies in flight together hold at most its frames.

Frames are counted twice: by the budget itself, and independently by counting the
`FRAME_BYTES` buffers `_ParallelFrames` allocates that are still alive (`live_frames`: the
module's `frame_buffer` is replaced by one that counts, a buffer is dead once nothing refers
to it). The second count is what memory holds, whatever the budget's own bookkeeping says.
FRAME_BYTES is made small (64 KiB) so that copies of a few MiB go through the paths a 1 GiB
copy takes. Nobody waits for the budget: a copy that gets no frame and holds none compresses
its next frame streaming; `frames_in` walks a copy's frames (frames.scan, as the restore
does) to check that those frames are the parallel path's, boundary for boundary.
"""

from __future__ import annotations

import functools
import gc
import io
import mmap
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule
from structlog.testing import capture_logs

from agent.config import Config
from agent.errors import IntegrityError
from agent.records import VersionRecord
from agent.restore.copies import verified_chunks
from agent.runtime import wiring
from agent.storage import frame_budget
from agent.storage import frames as frames_module
from agent.storage import volume as volume_module
from agent.storage.frame_budget import (
    FrameBudget,
    allocated_context_bytes,
    context_bytes,
    frame_bytes,
)
from agent.storage.volume import CompressionSettings, Expectation, StoredCopy, Volume
from tests.support.aws import make_config
from tests.support.frame_data import chunks_of, data_of, uniform_frames
from tests.support.waiting import wait_until

FRAME = 64 << 10
VOLUME_FRAME_BYTES = volume_module.FRAME_BYTES  # before the fixture below makes it FRAME
MIB = 1 << 20
PARALLEL = CompressionSettings(level=3, threads=2)
JOIN = 60.0  # seconds: a copy still running then is a deadlock


def record_of(copy: StoredCopy) -> VersionRecord:
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
        size=copy.size,
    )


def frame_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("zstd-frame")]


def decompressed(stored: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(stored)


def frames_in(stored: bytes) -> list[tuple[int, bool]]:
    """Each frame's declared content size and whether it carries a checksum, walked as the
    restore walks a copy (frames.scan: None unless every frame is one it reads in parallel)."""
    with tempfile.TemporaryFile() as file:
        file.write(stored)
        file.flush()
        found = frames_module.scan(
            file.fileno(), limit=None, max_window=volume_module.MAX_WINDOW_BYTES
        )
    assert found is not None, "not a copy frames.py reads in parallel"
    return [
        (
            frame.content_size,
            zstandard.get_frame_parameters(stored[frame.offset : frame.offset + 18]).has_checksum,
        )
        for frame in found
    ]


def expected_frames(size: int) -> list[tuple[int, bool]]:
    """The parallel path's frames for `size` bytes: FRAME each, the rest in the last."""
    return [(min(FRAME, size - start), True) for start in range(0, size, FRAME)]


def written(
    content: bytes,
    budget: FrameBudget,
    chunk: int = 10_000,
    settings_: CompressionSettings = PARALLEL,
    chunks: Iterator[bytes] | None = None,
) -> tuple[bytes, int]:
    """`content` through `_ParallelFrames` into memory: the stored bytes and how many of its
    frames were streamed."""
    sink = io.BytesIO()
    with volume_module._ParallelFrames(settings_, sink, len(content), budget) as sized:
        for part in chunks if chunks is not None else chunks_of(content, chunk):
            sized.write(part)
        sized.end()
    return sink.getvalue(), sized.streamed


class LiveFrames:
    """Counts the frame buffers `_ParallelFrames` allocated that are still alive."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live = 0
        self.peak = 0

    def allocate(self, size: int) -> mmap.mmap:
        buffer = _Counted(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        with self.lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
        weakref.finalize(buffer, self._freed)
        return buffer

    def _freed(self) -> None:
        with self.lock:
            self.live -= 1


class _Counted(mmap.mmap):
    """A frame buffer as volume.frame_buffer makes it, watched (weakref) until it is freed."""


@pytest.fixture(autouse=True)
def small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_module, "FRAME_BYTES", FRAME)
    uniform_frames(monkeypatch)


@pytest.fixture
def live_frames(monkeypatch: pytest.MonkeyPatch) -> LiveFrames:
    counter = LiveFrames()
    monkeypatch.setattr(volume_module, "frame_buffer", counter.allocate)
    return counter


def budget_of(monkeypatch: pytest.MonkeyPatch, frames: int) -> FrameBudget:
    budget = FrameBudget(frames)
    monkeypatch.setattr(volume_module, "FRAME_BUDGET", budget)
    return budget


class Copies:
    """Copies written at once, each in a thread of its own (as the consumer's workers do)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.results: dict[int, Any] = {}

    def start(self, index: int, run: Any) -> None:
        def target() -> None:
            try:
                self.results[index] = run()
            except BaseException as exc:  # the test inspects what each copy raised
                self.results[index] = exc

        thread = threading.Thread(target=target, name=f"copy-{index}")
        self.threads.append(thread)
        thread.start()

    def join(self) -> dict[int, Any]:
        for thread in self.threads:
            thread.join(JOIN)
        assert not [t.name for t in self.threads if t.is_alive()], "a copy never finished"
        return self.results


# -- the budget itself ---------------------------------------------------------------------


def test_a_budget_needs_a_frame() -> None:
    with pytest.raises(ValueError, match="at least one frame"):
        FrameBudget(0)


def test_a_take_answers_at_once_yes_while_a_frame_is_free() -> None:
    budget = FrameBudget(2)
    assert budget.take(3) and budget.take(3)
    assert not budget.take(3) and not budget.take(3)  # at once, not after a wait
    assert (budget.held, budget.peak, budget.refused) == (2, 2, 2)
    assert budget.held_bytes == budget.peak_bytes == 2 * frame_bytes(3) == budget.memory
    budget.give_back(2, 3)
    assert budget.held == budget.held_bytes == 0 and budget.take(3) and budget.peak == 2


def test_giving_back_more_than_was_taken_is_a_bug_not_a_bigger_budget() -> None:
    budget = FrameBudget(2)
    budget.take(3)
    with pytest.raises(RuntimeError, match=r"giving back 2 frames \(\d+ bytes\), 1 held"):
        budget.give_back(2, 3)
    assert budget.held == 1


def test_giving_back_a_frame_at_a_costlier_level_than_it_was_taken_is_a_bug_too() -> None:
    """The bytes are checked as well as the count: a frame taken at 3 and given back at 19
    would free more than it held, and the budget would then grant too much."""
    budget = FrameBudget(2)
    budget.take(3)
    with pytest.raises(RuntimeError, match="giving back 1 frames"):
        budget.give_back(1, 19)
    assert (budget.held, budget.held_bytes) == (1, frame_bytes(3))


def test_a_copy_failing_with_the_accounting_wrong_raises_its_own_error() -> None:
    """The accounting error (a frame given back twice) is logged, and the copy's own error,
    the one the operator can act on, is what its caller sees."""
    budget = FrameBudget(2)
    sized = volume_module._ParallelFrames(PARALLEL, io.BytesIO(), 3 * FRAME, budget)
    sized.write(data_of(FRAME // 2))  # a frame taken, being filled
    budget.give_back(1, 3)  # a bug elsewhere gives it back behind the copy's back
    raising = pytest.raises(IntegrityError, match="the copy's own")
    with capture_logs() as logs, raising, sized:  # closed as its own error unwinds
        raise IntegrityError("the copy's own")
    (logged,) = [line for line in logs if line["event"] == "frame_budget.miscounted"]
    assert logged["log_level"] == "error" and logged["giving_back"] == 1
    assert logged["held"] == 0 and "the copy's own" in logged["while_raising"]
    assert budget.held == 0


def test_a_write_copy_failing_with_the_accounting_wrong_raises_the_downloads_error(
    volume: Volume, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through `Volume.write_copy`: the download's error is what the caller sees
    (the copy's frames are closed with it as the error unwinding)."""
    budget = budget_of(monkeypatch, 2)
    data = data_of(4 * FRAME)

    def failing() -> Iterator[bytes]:
        yield from chunks_of(data[: FRAME // 2])
        # read in the copy's thread (below readahead.THREAD_FROM_BYTES): its first chunk
        # is written, so its frame is taken, before this line runs
        assert budget.held == 1
        budget.give_back(1, 3)  # a bug elsewhere gives this copy's frame back
        raise ConnectionResetError("peer went away")

    with capture_logs() as logs, pytest.raises(ConnectionResetError):
        volume.write_copy(failing(), PARALLEL, Expectation(size=len(data)))
    (logged,) = [line for line in logs if line["event"] == "frame_budget.miscounted"]
    assert "peer went away" in logged["while_raising"] and budget.held == 0


def test_an_unrelated_error_being_handled_around_the_close_does_not_hide_a_miscount() -> None:
    """A copy closed inside an `except` block of its caller (an error already handled, not
    the copy's own failure) still raises the miscount: only the copy's own error unwinding
    through it turns the raise into a log line."""
    budget = FrameBudget(2)
    sized = volume_module._ParallelFrames(PARALLEL, io.BytesIO(), 3 * FRAME, budget)
    sized.write(data_of(FRAME // 2))
    budget.give_back(1, 3)
    try:
        raise KeyError("handled by the caller, nothing to do with the copy")
    except KeyError:
        with capture_logs() as logs, pytest.raises(RuntimeError, match="giving back 1 frames"):
            sized.close()
    assert [line for line in logs if line["event"] == "frame_budget.miscounted"] == []


def test_the_budget_raises_a_miscount_inside_a_handler_unless_told_an_error_unwinds() -> None:
    budget = FrameBudget(2)
    try:
        raise OSError("unrelated, handled")
    except OSError:
        with pytest.raises(RuntimeError, match="giving back 1 frames"):
            budget.give_back(1, 3)
        with capture_logs() as logs:
            budget.give_back(1, 3, unwinding=IntegrityError("the copy's own"))
    (logged,) = logs
    assert (
        logged["event"] == "frame_budget.miscounted" and "the copy's own" in logged["while_raising"]
    )
    assert budget.held == 0


def test_with_no_error_on_the_way_a_miscount_still_raises() -> None:
    budget = FrameBudget(2)
    sized = volume_module._ParallelFrames(PARALLEL, io.BytesIO(), 3 * FRAME, budget)
    sized.write(data_of(FRAME // 2))
    budget.give_back(1, 3)
    with pytest.raises(RuntimeError, match=r"giving back 1 frames \(\d+ bytes\), 0 held"):
        sized.close()


# -- what a frame costs: its input, its output and its worker's zstd context ------------------


def test_the_budget_prices_the_frames_the_volume_writes() -> None:
    assert frame_budget.FRAME_BYTES == VOLUME_FRAME_BYTES
    assert frame_bytes(3) == 2 * VOLUME_FRAME_BYTES + (VOLUME_FRAME_BYTES >> 8) + context_bytes(3)


@pytest.mark.parametrize("level", [1, 3, 9, 19])
def test_a_context_is_counted_at_what_zstd_allocates_for_a_frame(level: int) -> None:
    """What a worker's one-shot compress of a whole frame allocates, measured by zstd itself
    (ZSTD_sizeof_CCtx), is what the budget counts."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    compressor.compress(bytes(range(256)) * (VOLUME_FRAME_BYTES // 256))
    assert context_bytes(level) == compressor.memory_size()


def test_the_table_of_contexts_is_what_this_zstd_allocates_at_every_level() -> None:
    """Pricing reads the table (no context allocated); a zstd that allocates otherwise
    fails here, naming the levels to write down again."""
    measured = {level: allocated_context_bytes(level) for level in frame_budget.CONTEXT_BYTES}
    assert measured == frame_budget.CONTEXT_BYTES
    assert context_bytes(-1) == allocated_context_bytes(-1)  # a fast level, not listed: measured


@pytest.mark.parametrize(
    ("level", "granted", "context_mib"),
    [(1, 3, (1, 2)), (3, 3, (3, 4)), (9, 2, (14, 16)), (12, 1, (40, 50)), (19, 0, (85, 95))],
)
def test_at_a_costlier_level_the_same_bytes_grant_fewer_frames(
    level: int, granted: int, context_mib: tuple[int, int]
) -> None:
    """3 frames (2 CPUs' default) are ~107 MiB at level 3; at level 19 one frame's context
    alone is ~90 MiB, so the budget grants none and every copy streams."""
    low, high = context_mib
    assert low * MIB <= context_bytes(level) <= high * MIB
    budget = FrameBudget(3)
    assert sum(budget.take(level) for _ in range(5)) == granted == budget.grants(level)
    assert budget.held * frame_bytes(level) == budget.held_bytes <= budget.memory


@given(frames=st.integers(1, 64), level=st.integers(1, 22))
@settings(max_examples=60, deadline=None)
def test_the_frames_granted_at_any_level_fit_in_the_bytes_of_the_budget(
    frames: int, level: int
) -> None:
    budget = FrameBudget(frames)
    while budget.take(level):
        pass
    assert (
        budget.held * frame_bytes(level) <= budget.memory < (budget.held + 1) * frame_bytes(level)
    )
    assert budget.held == budget.grants(level)
    assert FrameBudget(frames).grants(frame_budget.BASE_LEVEL) == frames  # `frames` at level 3


def test_with_no_frame_affordable_at_the_copys_level_every_frame_streams() -> None:
    budget = FrameBudget(3)
    content = data_of(3 * FRAME + 11)
    stored, streamed = written(content, budget, settings_=CompressionSettings(level=19, threads=2))
    assert decompressed(stored) == content
    assert frames_in(stored) == expected_frames(len(content)) and streamed == 4
    assert budget.peak == 0 and budget.refused == 4


def test_copies_at_two_levels_share_the_bytes_each_frame_priced_at_its_copys_level() -> None:
    """A level-19 frame (~122 MiB) fits in 6 frames' bytes (~214 MiB) with two level-3 frames
    beside it, not three; given back, it leaves room for six level-3 frames."""
    budget = FrameBudget(6)
    assert budget.take(19)
    assert budget.take(3) and budget.take(3) and not budget.take(3)
    assert budget.held_bytes == frame_bytes(19) + 2 * frame_bytes(3) <= budget.memory
    budget.give_back(1, 19)
    assert sum(budget.take(3) for _ in range(10)) == 4 and budget.held == 6


def test_the_wiring_gives_the_copies_the_configured_level(tmp_path: Any) -> None:
    config = make_config(tmp_path, storage={"root": str(tmp_path), "compression_level": 9})
    assert wiring.compression_settings(config).level == 9


def test_the_default_budget_lets_one_copy_hold_what_it_held_before() -> None:
    """One copy with the default settings holds one frame per CPU plus the one being filled:
    the default budget is that, so one large object alone is not slowed down by it."""
    workers = CompressionSettings().zstd_threads
    assert volume_module.FRAME_BUDGET.frames == workers + 1


# -- copies sharing it ---------------------------------------------------------------------


def test_four_large_copies_at_once_never_hold_more_than_the_budget(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    budget = budget_of(monkeypatch, 3)
    data = [data_of(24 * FRAME + seed, seed=seed) for seed in range(4)]
    copies = Copies()
    for index, content in enumerate(data):
        copies.start(
            index,
            lambda c=content: volume.write_copy(chunks_of(c), PARALLEL, Expectation(len(c))),
        )
    results = copies.join()
    for index, content in enumerate(data):
        copy = results[index]
        assert isinstance(copy, StoredCopy), copy
        assert b"".join(verified_chunks(volume, record_of(copy))) == content
    assert live_frames.peak <= 3 and budget.peak <= 3
    assert budget.held == 0 and live_frames.live == 0
    assert not frame_threads()


def test_without_the_bound_the_same_four_copies_hold_more(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    """What the test above would see without a budget (one of 1000 frames): every copy keeps
    at least one frame from its first to its end, and all four are made to overlap (each
    download waits for the others once two frames in), so more than three are alive at once."""
    budget_of(monkeypatch, 1000)
    together = threading.Barrier(4)

    def meeting(content: bytes) -> Iterator[bytes]:
        yield from chunks_of(content[: 2 * FRAME + 1])
        together.wait(JOIN)
        yield from chunks_of(content[2 * FRAME + 1 :])

    copies = Copies()
    for seed in range(4):
        content = data_of(8 * FRAME, seed=seed)
        copies.start(
            seed,
            lambda c=content: volume.write_copy(meeting(c), PARALLEL, Expectation(len(c))),
        )
    assert all(isinstance(r, StoredCopy) for r in copies.join().values())
    assert live_frames.peak >= 4


def test_a_frameless_copy_streams_while_another_holds_the_budget(
    monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    """Copy A holds the whole budget (two frames compressing, held at a gate); copy B, with
    no frame to take, does not wait: it streams every frame and completes while A's gate is
    still closed, holding no frame buffer; its frames are the parallel path's, boundary for
    boundary, each with its size and checksum. Then A completes. (Before, B waited for A.)"""
    budget = FrameBudget(2)
    gate = threading.Event()
    real = volume_module._ParallelFrames._compress

    def gated(self: Any, buffer: mmap.mmap, size: int) -> bytes:
        assert gate.wait(JOIN), "the gate never opened"
        return real(self, buffer, size)

    monkeypatch.setattr(volume_module._ParallelFrames, "_compress", gated)
    first, second = data_of(5 * FRAME, seed=1), data_of(3 * FRAME + 9, seed=2)
    copies = Copies()
    copies.start(0, lambda: written(first, budget))
    wait_until(lambda: budget.held == 2, what="copy A to hold the budget")
    copies.start(1, lambda: written(second, budget, chunk=7_777))
    copies.threads[1].join(JOIN)
    assert not copies.threads[1].is_alive(), "copy B waited for the budget"
    assert not gate.is_set() and budget.held == 2 and live_frames.peak == 2
    stored, streamed = copies.results[1]
    assert streamed == 4 and decompressed(stored) == second
    assert frames_in(stored) == expected_frames(len(second))
    gate.set()
    results = copies.join()
    stored_a, streamed_a = results[0]
    assert streamed_a == 0 and decompressed(stored_a) == first
    assert frames_in(stored_a) == expected_frames(len(first))
    assert budget.held == 0 and live_frames.live == 0
    assert not frame_threads()


def windows(stored: bytes) -> list[int]:
    """Each frame's window size, as its header declares it (the restore's max_window check)."""
    with tempfile.TemporaryFile() as file:
        file.write(stored)
        file.flush()
        found = frames_module.scan(
            file.fileno(), limit=None, max_window=volume_module.MAX_WINDOW_BYTES
        )
    assert found is not None
    return [
        zstandard.get_frame_parameters(stored[f.offset : f.offset + 18]).window_size for f in found
    ]


@pytest.mark.parametrize("level", [3, 19])
def test_a_copy_with_the_budget_spent_is_stored_and_restored_byte_for_byte(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames, level: int
) -> None:
    """Through `Volume.write_copy` with every frame of the budget held elsewhere: the copy
    completes without a frame buffer, and the restore reads it as a copy of frames, in
    parallel (frames.decompress_copy), byte for byte; same frames (sizes, checksums, windows) as
    a copy with frames free, at the default level and at a high one."""
    budget = budget_of(monkeypatch, 2)
    assert budget.take(3) and budget.take(3)  # held by copies not shown here
    settings_ = CompressionSettings(level=level, threads=2)
    data = data_of(6 * FRAME + 123, seed=5)
    copy = volume.write_copy(chunks_of(data, 3 * FRAME + 1), settings_, Expectation(len(data)))
    assert live_frames.peak == 0 and budget.held == 2 and budget.refused >= 7
    one_frame = frames_module._decompress_bytes
    serial_from = frames_module._serial_from
    parallel_frames: list[int] = []
    serial_reads: list[int] = []

    def counting(frame: frames_module.Frame, data: memoryview, max_window: int) -> bytes:
        parallel_frames.append(frame.content_size)
        return one_frame(frame, data, max_window)

    def serial(fd: int, offset: int, max_window: int) -> Iterator[bytes]:
        serial_reads.append(offset)
        return serial_from(fd, offset, max_window)

    monkeypatch.setattr(frames_module, "_decompress_bytes", counting)
    monkeypatch.setattr(frames_module, "_serial_from", serial)
    assert b"".join(verified_chunks(volume, record_of(copy))) == data
    # every frame went to the parallel reader (frames.decompress_copy), none read serially
    assert parallel_frames == [FRAME] * 6 + [123] and serial_reads == []
    stored = volume.copy_path(copy.sha256).read_bytes()
    assert frames_in(stored) == expected_frames(len(data))
    budget.give_back(2, 3)
    # the reference with frames free at its level (a level-19 frame costs more than the
    # 2 frames' bytes of `budget`)
    reference, streamed = written(data, FrameBudget(1000), settings_=settings_)
    assert streamed == 0 and frames_in(reference) == frames_in(stored)
    assert windows(reference) == windows(stored)
    assert live_frames.live == 0 and not frame_threads()


def test_a_streaming_copy_takes_a_frame_at_the_next_boundary_once_one_is_free(
    live_frames: LiveFrames,
) -> None:
    """The budget's one frame is held elsewhere while the copy's first frame and a half go
    by (streamed); it is given back mid-frame: the copy finishes that frame streaming,
    takes the frame at the next boundary and compresses the rest in parallel, in order."""
    budget = FrameBudget(1)
    assert budget.take(3)
    data = data_of(6 * FRAME + 77, seed=3)

    def chunks() -> Iterator[bytes]:
        yield from chunks_of(data[: FRAME + FRAME // 2])
        budget.give_back(1, 3)  # the other copy ends
        yield from chunks_of(data[FRAME + FRAME // 2 :])

    stored, streamed = written(data, budget, chunks=chunks())
    assert streamed == 2
    assert decompressed(stored) == data
    assert frames_in(stored) == expected_frames(len(data))
    assert budget.peak == 1 and live_frames.peak == 1
    assert budget.held == 0 and live_frames.live == 0


def test_a_copy_ending_inside_a_streamed_frame_is_an_integrity_error() -> None:
    """A streamed frame pledged its size: a copy cannot end short of it (_compress_to checks
    the size first; this is the frames' own guard)."""
    budget = FrameBudget(1)
    assert budget.take(3)
    sized = volume_module._ParallelFrames(PARALLEL, io.BytesIO(), 3 * FRAME, budget)
    try:
        sized.write(data_of(FRAME + 10))
        with pytest.raises(IntegrityError, match="pledged"):
            sized.end()
    finally:
        sized.close()
    assert budget.held == 1 and sized.stream is None


def test_a_copy_that_fails_gives_its_frames_back_while_another_streams(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    """A holds the budget and fails compressing (MemoryError); B, started meanwhile,
    streams and is stored before A fails; then A gives every frame back; nothing is left
    held or running."""
    budget = budget_of(monkeypatch, 2)
    gate = threading.Event()
    real = volume_module._ParallelFrames._compress

    def failing_for_a(self: Any, buffer: mmap.mmap, size: int) -> bytes:
        if threading.current_thread().name.startswith("zstd-frame") and self.left > FRAME:
            assert gate.wait(JOIN), "the gate never opened"
            raise MemoryError("copy A's frame")
        return real(self, buffer, size)

    monkeypatch.setattr(volume_module._ParallelFrames, "_compress", failing_for_a)
    first, second = data_of(12 * FRAME, seed=1), data_of(FRAME + 1, seed=2)
    copies = Copies()
    copies.start(0, lambda: volume.write_copy(chunks_of(first), PARALLEL, Expectation(len(first))))
    wait_until(lambda: budget.held == 2, what="copy A to hold the budget")
    copies.start(
        1, lambda: volume.write_copy(chunks_of(second), PARALLEL, Expectation(len(second)))
    )
    copies.threads[1].join(JOIN)
    assert not copies.threads[1].is_alive(), "copy B waited for the budget"
    assert isinstance(copies.results[1], StoredCopy) and budget.held == 2
    gate.set()
    results = copies.join()
    assert isinstance(results[0], MemoryError)
    assert b"".join(verified_chunks(volume, record_of(results[1]))) == second
    assert budget.held == 0
    # the MemoryError's traceback holds the failed frame's buffer (its frames' locals) for
    # as long as someone holds the exception; the copy itself keeps none
    results.clear()
    gc.collect()
    assert live_frames.live == 0
    assert not frame_threads()
    assert [p.name for p in volume.tmp_dir.iterdir()] == []


def test_a_download_failing_midway_gives_its_frames_back(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    budget = budget_of(monkeypatch, 3)
    data = data_of(8 * FRAME)

    def failing() -> Iterator[bytes]:
        yield from chunks_of(data[: 5 * FRAME + 100])
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        volume.write_copy(failing(), PARALLEL, Expectation(size=len(data)))
    assert budget.held == 0 and budget.peak >= 1 and live_frames.live == 0
    assert not frame_threads()


def test_a_download_failing_inside_a_streamed_frame_leaves_nothing(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    budget = budget_of(monkeypatch, 1)
    assert budget.take(3)  # held elsewhere: this copy streams
    data = data_of(8 * FRAME)

    def failing() -> Iterator[bytes]:
        yield from chunks_of(data[: 2 * FRAME + 100])
        raise ConnectionResetError("peer went away")

    with pytest.raises(ConnectionResetError):
        volume.write_copy(failing(), PARALLEL, Expectation(size=len(data)))
    assert budget.held == 1 and live_frames.peak == 0
    assert [p.name for p in volume.tmp_dir.iterdir()] == []
    assert not frame_threads()


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    frames=st.integers(1, 4),
    elsewhere=st.integers(0, 4),
    threads=st.integers(1, 3),
    sizes=st.lists(st.integers(FRAME + 1, 6 * FRAME), min_size=1, max_size=4),
    chunk=st.integers(1_000, 3 * FRAME),
)
def test_any_budget_workers_and_copies_complete_within_the_bound(
    frames: int, elsewhere: int, threads: int, sizes: list[int], chunk: int
) -> None:
    """However small the budget, however much of it is held elsewhere, and however many
    copies share it, every copy completes with the parallel path's frames, reads back, and
    together they never hold more than the budget."""
    budget = FrameBudget(frames)
    elsewhere = min(elsewhere, frames)
    for _ in range(elsewhere):
        assert budget.take(3)
    settings_ = CompressionSettings(level=1, threads=threads)
    contents = [data_of(size, seed=index) for index, size in enumerate(sizes)]
    copies = Copies()
    for index, content in enumerate(contents):
        copies.start(index, lambda c=content: written(c, budget, chunk, settings_))
    results = copies.join()
    for index, content in enumerate(contents):
        stored, streamed = results[index]
        assert decompressed(stored) == content
        assert frames_in(stored) == expected_frames(len(content))
        if elsewhere == frames:
            assert streamed == len(frames_in(stored))  # no frame free: every one streamed
    assert budget.peak_bytes <= budget.memory and budget.held == elsewhere
    assert not frame_threads()


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_copy_alone_holds_at_most_its_workers_plus_one_frames_whatever_its_size(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames, threads: int
) -> None:
    """The frame buffers are mapped memory that tracemalloc does not see (test_store.py's
    bound covers the rest): counted here. A roomy budget: the copy's own bound applies."""
    budget = budget_of(monkeypatch, 1000)
    data = data_of(32 * FRAME + 5)
    settings_ = CompressionSettings(level=3, threads=threads)
    copy = volume.write_copy(chunks_of(data, 3 * FRAME + 7), settings_, Expectation(len(data)))
    assert b"".join(verified_chunks(volume, record_of(copy))) == data
    assert live_frames.peak <= threads + 1 and budget.peak <= threads + 1
    assert budget.held == 0 and live_frames.live == 0


class BudgetMachine(RuleBasedStateMachine):
    """Copies taking and giving back frames in any order, against a model: what each copy
    holds and the level it started at. Every take answers at once (nobody waits): yes
    exactly when one more frame at the copy's level fits in the budget's bytes beside what
    all copies hold, each priced at its own copy's level. The configured level changes at
    any time (a reload), between any copy's frames: copies started before keep theirs, so
    their later frames are priced at the level they compress at, not at the new one."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 3
        self.budget = FrameBudget(self.frames)
        self.configured = frame_budget.BASE_LEVEL
        self.holding: list[int] = []
        self.levels: list[int] = []
        self.refused = 0

    copies = Bundle("copies")

    def held_bytes(self) -> int:
        return sum(h * frame_bytes(lv) for h, lv in zip(self.holding, self.levels, strict=True))

    @rule(target=copies)
    def start_a_copy(self) -> int:
        """A copy compresses at the level configured when it starts, to its end."""
        self.holding.append(0)
        self.levels.append(self.configured)
        return len(self.holding) - 1

    @rule(copy=copies)
    def take(self, copy: int) -> None:
        level = self.levels[copy]
        free = self.held_bytes() + frame_bytes(level) <= self.budget.memory
        assert self.budget.take(level) is free
        self.holding[copy] += free
        self.refused += not free

    @rule(copy=copies, data=st.data())
    def give_back(self, copy: int, data: st.DataObject) -> None:
        if self.holding[copy]:
            frames = data.draw(st.integers(1, self.holding[copy]))
            self.budget.give_back(frames, self.levels[copy])
            self.holding[copy] -= frames

    @rule(level=st.sampled_from([1, 3, 6, 9, 12, 19]))
    def reload_to_a_level(self, level: int) -> None:
        """Frames held stay held; copies in flight keep their level; new copies get this one
        (compression_settings, as the daemon's reload calls it)."""
        assert wiring.compression_settings(config_at(level)).level == level
        self.configured = level

    @rule(copy=copies)
    def end_a_copy(self, copy: int) -> None:
        """However it ends, a copy gives back every frame it holds."""
        if self.holding[copy]:
            self.budget.give_back(self.holding[copy], self.levels[copy])
            self.holding[copy] = 0

    @invariant()
    def what_is_held_is_what_the_copies_hold_priced_at_their_levels_within_the_bytes(
        self,
    ) -> None:
        assert self.budget.held == sum(self.holding)
        assert self.budget.held_bytes == self.held_bytes() <= self.budget.memory
        assert self.budget.peak_bytes <= self.budget.memory
        assert self.budget.refused == self.refused


@functools.cache
def config_at(level: int) -> Config:
    root = Path(tempfile.mkdtemp(prefix="frame-budget-config-"))  # never written to
    return make_config(root, storage={"root": str(root), "compression_level": level})


TestBudgetMachine = BudgetMachine.TestCase
