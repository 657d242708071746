"""Small measuring helpers shared by the scenarios."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

MiB = 1 << 20


def run_timed(
    command: Sequence[str], *, stdout: Path | None = None, env: dict[str, str] | None = None
) -> float:
    """Run a command to completion; its wall-clock seconds (stdout to a file or /dev/null)."""
    sink = stdout.open("wb") if stdout else open(os.devnull, "wb")  # noqa: SIM115 - closed below
    try:
        started = time.perf_counter()
        subprocess.run(list(command), stdout=sink, check=True, env=env)
        return time.perf_counter() - started
    finally:
        sink.close()


def mb_per_s(size: int, seconds: float) -> float:
    return size / MiB / seconds if seconds > 0 else float("inf")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (p50: fraction 0.5)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]
