"""Data for the tests of copies written as frames (test_frames.py, test_frame_budget.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from agent.storage import volume as volume_module


def data_of(size: int, seed: int = 1) -> bytes:
    """Compressible but distinct bytes (log-like lines with a counter)."""
    lines = b"".join(
        b"%08d seed=%d GET /v1/orders/%d 200\n" % (i, seed, i * 7) for i in range(size // 20 + 1)
    )
    return lines[:size]


def chunks_of(data: bytes, size: int = 10_000) -> Iterator[bytes]:
    """`data` as a download hands it over, `size` bytes at a time."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


def uniform_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame FRAME_BYTES (the last the rest): no smaller frames at a split copy's two
    ends, so the tests that use it count frames and boundaries simply (test_frames.py tests the
    ends: `test_a_split_copy_starts_and_ends_with_smaller_frames`)."""
    monkeypatch.setattr(volume_module, "RAMP_FRAMES", 0)
    monkeypatch.setattr(volume_module, "TAIL_FRAMES", 1)
