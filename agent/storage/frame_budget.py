"""A process-wide budget of compression frames: the bound on a backup's frame memory.

A copy above `FRAME_BYTES` is compressed as independent frames, several at once
(`_ParallelFrames` in volume.py); every frame it holds is a `FRAME_BYTES` buffer of input
plus, until it is written, its compressed output. One budget per process counts the frames
every such copy holds, so the agent's frame memory is at most `frames` of them however many
large objects are in flight (docs/design.md, "Concurrency").

Nobody waits for the budget, so there is no deadlock to argue about: `take` answers at
once. A copy that gets a frame fills it and compresses it on its workers; a copy that holds
frames but gets no more goes on with its own (waits for its own oldest frame to be written
and reuses its buffer, which needs nothing from anyone else); a copy that holds none
compresses its next frame streaming in its own thread (same frame boundaries, header and
checksum, no `FRAME_BYTES` buffer: only a zstd context of a few MiB) and asks again at the
next frame boundary. So a large object never stalls with its download open and unread
however many others hold the frames; it is only slower (one thread) while they do.

Every frame a copy took goes back when the copy ends, however it ends (`_ParallelFrames.close`).

What a frame costs (`frame_bytes`): its `FRAME_BYTES` input buffer, its compressed output
(at most zstd's compress bound of it) and the zstd context of the worker thread compressing
it. The context is counted because it grows with the level: 3.5 MiB at level 3, 14.7 at 9,
89.5 at 19, 273.5 at 22 (what zstd allocates for a 16 MiB frame, `context_bytes`). A copy's
pool starts a thread only for a frame it submits and holds, so its threads (each keeping one
compressor) are never more than the frames it holds, and they end with the copy. The budget
is a number of bytes, `frames` frames at `BASE_LEVEL`'s cost; each frame is priced at the
level of the copy that takes it (the copy's `CompressionSettings`, which a config reload does
not change for a copy in flight: its compressors stay at its level), so copies alone at one
level are granted as many frames as fit in those bytes (all of them at level 3, 2 of 3 at
level 9, none at level 19 on 2 CPUs: every large copy then streams), and copies at
different levels, before and after a reload, share the same bytes.

Not counted: the compressed output of the one frame a copy is writing (its input buffer is
already filling the next frame: at most a compress bound of `FRAME_BYTES` per copy, about a
fifth of that for log-like data), a copy streaming holds one context of its own outside the
budget (so up to one per worker copying a large object: the pipeline's workers bound them,
not this budget), and
copies of a known size up to `FRAME_BYTES` (one call up to 1 MiB, one frame streamed by zstd's
own threads above) or of unknown size compress outside `_ParallelFrames` altogether, each
with contexts at the configured level (docs/design.md, "Concurrency", says what each costs).
"""

from __future__ import annotations

import functools
import io
import threading

import structlog
import zstandard

log = structlog.get_logger("agent.frame_budget")

# The input of one frame; volume.FRAME_BYTES, which imports this module (a test checks both
# agree).
FRAME_BYTES = 16 << 20
# The level whose frame cost sizes a budget: the default `storage.compression_level`.
BASE_LEVEL = 3


def compress_bound(size: int) -> int:
    """The most bytes zstd writes for `size` bytes of input (ZSTD_COMPRESSBOUND, zstd.h)."""
    small = ((128 << 10) - size) >> 11 if size < (128 << 10) else 0
    return size + (size >> 8) + small


# What zstd allocates for one single-threaded context compressing a frame of `FRAME_BYTES`
# at each level (ZSTD_sizeof_CCtx once the frame's size is pledged: what the one-shot
# compress of a frame allocates too; libzstd 1.5.7 through python-zstandard 0.25), as
# `allocated_context_bytes` measures it: written down so that pricing a level allocates
# nothing (measuring touches up to the whole context: +81 MiB of peak RSS at level 19, +257
# at 22). tests/unit/test_frame_budget.py measures every level against this table.
CONTEXT_BYTES = {
    1: 1369625,
    2: 2090521,
    3: 3663385,
    4: 4974105,
    5: 5498393,
    6: 5498393,
    7: 8119833,
    8: 8119833,
    9: 15459865,
    10: 25945625,
    11: 25945625,
    12: 46917145,
    13: 38528537,
    14: 55305753,
    15: 72082969,
    16: 38677785,
    17: 59649305,
    18: 60293783,
    19: 93848215,
    20: 186122903,
    21: 219677335,
    22: 286786199,
}


def context_bytes(level: int) -> int:
    """The memory of one single-threaded zstd context at `level` compressing a frame of
    `FRAME_BYTES`: from the table, measured only for a level it does not list."""
    known = CONTEXT_BYTES.get(level)
    return known if known is not None else allocated_context_bytes(level)


@functools.cache
def allocated_context_bytes(level: int) -> int:
    """What zstd allocates for that context, measured (allocating it). More than
    python-zstandard's `estimated_compression_context_size`, which leaves out part of the
    workspace (3.49 MiB against 1.24 at level 3)."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    writer = compressor.stream_writer(io.BytesIO(), size=FRAME_BYTES, closefd=False)
    writer.write(b"\0")  # the context is sized on the first write, for the pledged size
    return int(compressor.memory_size())


def frame_bytes(level: int) -> int:
    """The memory one held frame may cost at `level`: input, output and its worker's context."""
    return FRAME_BYTES + compress_bound(FRAME_BYTES) + context_bytes(level)


class FrameBudget:
    """At most `frames` frames at `BASE_LEVEL`'s cost held at once by all the copies of the
    process, counted in bytes: each frame at the cost of the level of the copy that takes it
    (`frame_bytes`), so a costlier level gets fewer frames from the same bytes, and copies at
    different levels (before and after a reload) share them."""

    def __init__(self, frames: int) -> None:
        if frames < 1:
            raise ValueError(f"a frame budget needs at least one frame, not {frames}")
        self.frames = frames
        self.memory = frames * frame_bytes(BASE_LEVEL)  # bytes: the bound the docs state
        self._held = 0
        self._held_bytes = 0
        self._peak = 0
        self._peak_bytes = 0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Frames held now by all copies."""
        return self._held

    @property
    def held_bytes(self) -> int:
        """What the frames held now cost, each at its copy's level: at most `memory`."""
        return self._held_bytes

    @property
    def peak(self) -> int:
        """The most frames ever held at once."""
        return self._peak

    @property
    def peak_bytes(self) -> int:
        """The most bytes of frames ever held at once."""
        return self._peak_bytes

    @property
    def refused(self) -> int:
        """Takes answered False so far (the budget was spent)."""
        return self._refused

    def grants(self, level: int) -> int:
        """How many frames copies at `level` alone would be granted."""
        return self.memory // frame_bytes(level)

    def take(self, level: int) -> bool:
        """One more frame for a copy compressing at `level`, if its cost fits in what the
        frames held leave of the budget (True), else False at once: never waits."""
        cost = frame_bytes(level)
        with self._lock:
            if self._held_bytes + cost > self.memory:
                self._refused += 1
                return False
            self._held += 1
            self._held_bytes += cost
            self._peak = max(self._peak, self._held)
            self._peak_bytes = max(self._peak_bytes, self._held_bytes)
            return True

    def give_back(self, frames: int, level: int, *, unwinding: BaseException | None = None) -> None:
        """Return `frames` frames a copy at `level` took.

        More than are held is a bug in the accounting: raised, unless the caller says its
        copy's own error is unwinding (`unwinding`: a copy's `close` as its failure
        propagates): then that error, the one the operator can act on, must not be hidden, so
        the miscount is logged instead. Only the copy's own error counts: one merely being
        handled around the call (`sys.exception()` inside an unrelated `except`) is not on
        its way out, and the miscount is raised. Either way nothing is given back: what is
        held may be other copies' frames."""
        cost = frames * frame_bytes(level)
        with self._lock:
            held, held_bytes = self._held, self._held_bytes
            if 0 < frames <= held and cost <= held_bytes:
                self._held -= frames
                self._held_bytes -= cost
                return
        if unwinding is None:
            raise RuntimeError(
                f"giving back {frames} frames ({cost} bytes), {held} held ({held_bytes} bytes)"
            )
        log.error(
            "frame_budget.miscounted",
            giving_back=frames,
            held=held,
            while_raising=repr(unwinding),
        )
