"""The frame budget across a config reload: a copy keeps the level it started with, and
its frames are priced at that level, not at the level configured since.

A reload (the daemon's `_reload`) gives new copies new `CompressionSettings`; a copy in
flight keeps its own, so its zstd contexts stay at its level. Before, the budget priced
every frame at the process's configured level: a level-19 copy that asked for frames after
a reload to level 3 was granted them at 3.5 MiB of context each while each cost ~90 MiB.
FRAME_BYTES is made small (64 KiB) as in test_frame_budget.py; the price of a frame is
still that of a real 16 MiB one (frame_budget.frame_bytes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from agent.runtime import wiring
from agent.storage import volume as volume_module
from agent.storage.frame_budget import FrameBudget, frame_bytes
from agent.storage.volume import CompressionSettings, Expectation, Volume
from tests.support.aws import make_config
from tests.support.frame_data import chunks_of, data_of

FRAME = 64 << 10


@pytest.fixture(autouse=True)
def small_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(volume_module, "FRAME_BYTES", FRAME)


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> FrameBudget:
    """The default budget on 2 CPUs (3 frames at level 3: ~107 MiB; no frame at level 19)."""
    budget = FrameBudget(3)
    monkeypatch.setattr(volume_module, "FRAME_BUDGET", budget)
    return budget


def settings_at(tmp_path: Path, level: int) -> CompressionSettings:
    """What the wiring makes of a config at `level` (at start and at every reload)."""
    config = make_config(
        tmp_path, storage={"root": str(tmp_path), "compression_level": level,
                           "compression_threads": 2}
    )  # fmt: skip
    return wiring.compression_settings(config)


def test_a_copy_started_at_19_is_priced_at_19_after_a_reload_to_3(
    volume: Volume, budget: FrameBudget, tmp_path: Path
) -> None:
    """The copy starts at level 19 (none of its frames fit: it streams); a reload to level 3
    happens after its first frame; its later frames are still level-19 frames (its
    compressor is), so the budget still grants it none. Before, it was granted 3 frames
    (~365 MiB of memory counted as ~107)."""
    started = settings_at(tmp_path, 19)
    data = data_of(6 * FRAME + 5)

    def download() -> Iterator[bytes]:
        yield from chunks_of(data[: FRAME + 1])
        assert settings_at(tmp_path, 3).level == 3  # the reload, mid-copy
        yield from chunks_of(data[FRAME + 1 :])

    copy = volume.write_copy(download(), started, Expectation(len(data)))
    stored = volume.copy_path(copy.sha256).read_bytes()
    assert (
        zstandard.ZstdDecompressor().decompressobj(read_across_frames=True).decompress(stored)
        == data
    )
    assert budget.peak * frame_bytes(19) <= budget.memory
    assert budget.peak == 0 and budget.held == 0


def test_after_the_reload_new_copies_are_priced_at_the_new_level(
    volume: Volume, budget: FrameBudget, tmp_path: Path
) -> None:
    """The same reload lets a copy started after it take frames at level 3's price."""
    settings_at(tmp_path, 19)
    after = settings_at(tmp_path, 3)
    data = data_of(6 * FRAME + 5, seed=2)
    volume.write_copy(chunks_of(data), after, Expectation(len(data)))
    assert 1 <= budget.peak <= 3 and budget.held == 0
