"""The process-wide frame budget: large copies in flight together hold at most its frames.

Frames are counted twice: by the budget itself, and independently by counting the
`FRAME_BYTES` buffers `_ParallelFrames` allocates that are still alive (`live_frames`: the
module's `frame_buffer` is replaced by one that counts, a buffer is dead once nothing refers
to it). The second count is what memory holds, whatever the budget's own bookkeeping says.
FRAME_BYTES is made small (64 KiB) so that copies of a few MiB go through the paths a 1 GiB
copy takes.
"""

from __future__ import annotations

import gc
import io
import mmap
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, precondition, rule

from agent.records import VersionRecord
from agent.restore.copies import verified_chunks
from agent.storage import volume as volume_module
from agent.storage.frame_budget import FrameBudget
from agent.storage.volume import CompressionSettings, Expectation, StoredCopy, Volume
from tests.support.waiting import wait_until

FRAME = 64 << 10
PARALLEL = CompressionSettings(level=3, threads=2)
JOIN = 60.0  # seconds: a copy still running then is a deadlock


def data_of(size: int, seed: int = 1) -> bytes:
    """Compressible but distinct bytes (log-like lines with a counter)."""
    lines = b"".join(
        b"%08d seed=%d GET /v1/orders/%d 200\n" % (i, seed, i * 7) for i in range(size // 20 + 1)
    )
    return lines[:size]


def chunks_of(data: bytes, size: int = 10_000) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


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


def test_a_copy_holding_frames_gets_no_more_than_the_budget_and_never_waits() -> None:
    budget = FrameBudget(2)
    assert budget.take(holding=0) and budget.take(holding=1)
    assert not budget.take(holding=2)  # at once, not after a wait
    assert (budget.held, budget.peak) == (2, 2)
    budget.give_back(2)
    assert budget.held == 0 and budget.take(holding=0)


def test_giving_back_more_than_was_taken_is_a_bug_not_a_bigger_budget() -> None:
    budget = FrameBudget(2)
    budget.take(holding=0)
    with pytest.raises(RuntimeError, match="giving back 2 frames, 1 held"):
        budget.give_back(2)
    assert budget.held == 1


def test_a_frameless_copy_waits_and_holders_take_no_more_while_it_does() -> None:
    budget = FrameBudget(2)
    budget.take(holding=0)
    budget.take(holding=1)
    got = threading.Event()
    waiter = threading.Thread(target=lambda: budget.take(holding=0) and got.set())
    waiter.start()
    wait_until(lambda: budget.waiting == 1, what="the frameless copy to wait")
    assert not got.is_set()
    budget.give_back()
    assert got.wait(JOIN)
    waiter.join(JOIN)
    assert (budget.held, budget.waiting) == (2, 0)
    # one free frame, but a frameless copy waits again: the holders go on with their own
    budget.give_back()
    second = threading.Thread(target=lambda: budget.take(holding=0))
    budget.take(holding=0)  # the budget is spent again
    second.start()
    wait_until(lambda: budget.waiting == 1, what="the second frameless copy to wait")
    budget.give_back()
    second.join(JOIN)
    assert not second.is_alive() and budget.held == 2
    assert not budget.take(holding=1)


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


def test_a_frameless_copy_waits_for_a_frame_a_busy_copy_gives_back(
    monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    """Copy A holds the whole budget (two frames compressing, held at a gate); copy B waits
    for its first frame without taking any; once A's first frame is written A gives it back
    (B waits) and goes on with the one it has; both finish and read back."""
    budget = FrameBudget(2)
    gate = threading.Event()
    real = volume_module._ParallelFrames._compress

    def gated(self: Any, buffer: mmap.mmap, size: int) -> bytes:
        assert gate.wait(JOIN), "the gate never opened"
        return real(self, buffer, size)

    monkeypatch.setattr(volume_module._ParallelFrames, "_compress", gated)
    first, second = data_of(5 * FRAME, seed=1), data_of(3 * FRAME + 9, seed=2)
    sinks = [io.BytesIO(), io.BytesIO()]

    def write(index: int, content: bytes) -> None:
        frames = volume_module._ParallelFrames(PARALLEL, sinks[index], len(content), budget)
        try:
            for chunk in chunks_of(content):
                frames.write(chunk)
            frames.end()
        finally:
            frames.close()

    copies = Copies()
    copies.start(0, lambda: write(0, first))
    wait_until(lambda: budget.held == 2, what="copy A to hold the budget")
    copies.start(1, lambda: write(1, second))
    wait_until(lambda: budget.waiting == 1, what="copy B to wait for its first frame")
    assert budget.held == 2 and live_frames.live == 2
    gate.set()
    results = copies.join()
    assert results == {0: None, 1: None}
    assert decompressed(sinks[0].getvalue()) == first
    assert decompressed(sinks[1].getvalue()) == second
    assert (budget.peak, live_frames.peak) == (2, 2)
    assert budget.held == 0 and live_frames.live == 0
    assert not frame_threads()


def test_a_copy_that_fails_gives_its_frames_back_to_the_copy_waiting_for_them(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, live_frames: LiveFrames
) -> None:
    """A holds the budget and fails compressing (MemoryError); B, waiting meanwhile, gets
    the frames A held and completes; nothing is left held or running."""
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
    wait_until(lambda: budget.waiting == 1, what="copy B to wait for its first frame")
    gate.set()
    results = copies.join()
    assert isinstance(results[0], MemoryError)
    assert isinstance(results[1], StoredCopy)
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


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    frames=st.integers(1, 4),
    threads=st.integers(1, 3),
    sizes=st.lists(st.integers(FRAME + 1, 6 * FRAME), min_size=1, max_size=4),
    chunk=st.integers(1_000, 3 * FRAME),
)
def test_any_budget_workers_and_copies_complete_within_the_bound(
    frames: int, threads: int, sizes: list[int], chunk: int
) -> None:
    """However small the budget and however many copies share it, every copy completes,
    reads back, and together they never hold more than the budget."""
    budget = FrameBudget(frames)
    settings_ = CompressionSettings(level=1, threads=threads)
    contents = [data_of(size, seed=index) for index, size in enumerate(sizes)]
    sinks = [io.BytesIO() for _ in contents]

    def write(index: int) -> None:
        content = contents[index]
        sized = volume_module._ParallelFrames(settings_, sinks[index], len(content), budget)
        try:
            for part in chunks_of(content, chunk):
                sized.write(part)
            sized.end()
        finally:
            sized.close()

    copies = Copies()
    for index in range(len(contents)):
        copies.start(index, lambda i=index: write(i))
    assert all(result is None for result in copies.join().values())
    for sink, content in zip(sinks, contents, strict=True):
        assert decompressed(sink.getvalue()) == content
    assert budget.peak <= frames and budget.held == 0
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
    """Copies taking and giving back frames in any order, against a model: a list of what
    each copy holds. Only takes that do not block are made here (a frameless copy takes when
    a frame is free); the waits are the threaded tests' above."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 3
        self.budget = FrameBudget(self.frames)
        self.holding: list[int] = []

    copies = Bundle("copies")

    @precondition(lambda self: sum(self.holding) < self.frames)
    @rule(target=copies)
    def start_a_copy(self) -> int:
        assert self.budget.take(holding=0)
        self.holding.append(1)
        return len(self.holding) - 1

    @rule(copy=copies)
    def take_another(self, copy: int) -> None:
        if not self.holding[copy]:
            return  # a frameless copy would wait: not here
        free = sum(self.holding) < self.frames
        assert self.budget.take(holding=self.holding[copy]) is free
        self.holding[copy] += free

    @rule(copy=copies, data=st.data())
    def give_back(self, copy: int, data: st.DataObject) -> None:
        if self.holding[copy]:
            frames = data.draw(st.integers(1, self.holding[copy]))
            self.budget.give_back(frames)
            self.holding[copy] -= frames

    @invariant()
    def held_is_what_the_copies_hold_and_never_more_than_the_budget(self) -> None:
        assert self.budget.held == sum(self.holding) <= self.frames
        assert self.budget.peak <= self.frames and self.budget.waiting == 0


TestBudgetMachine = BudgetMachine.TestCase
