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
"""

from __future__ import annotations

import threading


class FrameBudget:
    """At most `frames` frames held at once by all the copies of the process."""

    def __init__(self, frames: int) -> None:
        if frames < 1:
            raise ValueError(f"a frame budget needs at least one frame, not {frames}")
        self.frames = frames
        self._held = 0
        self._peak = 0
        self._refused = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Frames held now by all copies."""
        return self._held

    @property
    def peak(self) -> int:
        """The most frames ever held at once."""
        return self._peak

    @property
    def refused(self) -> int:
        """Takes answered False so far (the budget was spent)."""
        return self._refused

    def take(self) -> bool:
        """One more frame if one is free (True), else False at once: never waits."""
        with self._lock:
            if self._held >= self.frames:
                self._refused += 1
                return False
            self._held += 1
            self._peak = max(self._peak, self._held)
            return True

    def give_back(self, frames: int = 1) -> None:
        """Return `frames` frames a copy took."""
        with self._lock:
            if not 0 < frames <= self._held:
                raise RuntimeError(f"giving back {frames} frames, {self._held} held")
            self._held -= frames
