"""A process-wide budget of compression frames: the bound on a backup's frame memory.

A copy above `FRAME_BYTES` is compressed as independent frames, several at once
(`_ParallelFrames` in volume.py); every frame it holds is a `FRAME_BYTES` buffer of input
plus, until it is written, its compressed output. One budget per process counts the frames
every such copy holds, so the agent's frame memory is at most `frames` of them however many
large objects are in flight (docs/design.md, "Concurrency").

No deadlock, by two rules:

* a copy that holds no frame waits for one. It holds nothing while it waits, so it keeps
  nobody else from finishing;
* a copy that holds frames never waits for the budget. It takes another frame only if one
  is free and no frameless copy is waiting; otherwise it goes on with the frames it has
  (waits for its own oldest frame to be written and reuses its buffer), which needs nothing
  from anyone else. When a frameless copy waits, a copy holding more than one frame gives
  one back as soon as it has written it, so the waiter is served within a frame's
  compression, or at the latest when a one-frame copy ends.

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
        self._waiting = 0  # copies holding no frame, waiting for one
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Frames held now by all copies."""
        return self._held

    @property
    def peak(self) -> int:
        """The most frames ever held at once."""
        return self._peak

    @property
    def waiting(self) -> int:
        """Copies waiting for their first frame."""
        return self._waiting

    def take(self, *, holding: int) -> bool:
        """One more frame for a copy that holds `holding` of them.

        With none held: waits until one is free, then True. With some held: True if one is
        free and no frameless copy waits, else False at once (the copy goes on with its own).
        """
        with self._changed:
            if holding:
                if self._held >= self.frames or self._waiting:
                    return False
            else:
                self._waiting += 1
                try:
                    while self._held >= self.frames:
                        self._changed.wait()
                finally:
                    self._waiting -= 1
            self._held += 1
            self._peak = max(self._peak, self._held)
            return True

    def give_back(self, frames: int = 1) -> None:
        """Return `frames` frames a copy took."""
        with self._changed:
            if not 0 < frames <= self._held:
                raise RuntimeError(f"giving back {frames} frames, {self._held} held")
            self._held -= frames
            self._changed.notify(frames)
