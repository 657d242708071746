"""Scenario 4: ratio and speed per zstd level on the benchmark data (one thread)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

LEVELS = (1, 2, 3, 4, 6, 9, 12, 15)


@dataclass(frozen=True)
class LevelResult:
    level: int
    size: int
    compressed: int
    compress_seconds: float
    decompress_seconds: float

    @property
    def ratio(self) -> float:
        return self.size / self.compressed


def measure_levels(sample: Path, size: int, levels: tuple[int, ...] = LEVELS) -> list[LevelResult]:
    with sample.open("rb") as handle:
        data = handle.read(size)
    results = []
    for level in levels:
        compressor = zstandard.ZstdCompressor(level=level, threads=0)
        started = time.perf_counter()
        frame = compressor.compress(data)
        compressed_at = time.perf_counter()
        zstandard.ZstdDecompressor().decompress(frame)
        done = time.perf_counter()
        results.append(
            LevelResult(level, len(data), len(frame), compressed_at - started, done - compressed_at)
        )
    return results
