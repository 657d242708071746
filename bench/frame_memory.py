"""Peak RSS of large backups written at once: the process-wide frame budget's effect.

`python -m bench.frame_memory [--objects 4] [--mib 256] [--frames N] [--level L]
[--unpriced] [DIR]` writes
`--objects` objects of `--mib` MiB each at once, each in a thread of its own (as the
consumer's workers do), through `Volume.write_copy` with its size known (so each is split
into 16 MiB frames compressed side by side), into a fresh volume under DIR (default: the
system's temp directory). It prints the wall and CPU time, the process's peak RSS, the
most frames held at once and how many takes the budget refused (each a frame that copy
compressed streaming, or with a buffer of its own). `--frames N` gives the copies a budget
of N frames instead of the default (CPUs + 1); `--frames 1000` is what they held before the
budget (each its own `compression_threads + 1`). `--level L` compresses at level L (default
3) with each frame priced at it as the copies' own level (fewer frames at a costlier level);
`--unpriced` leaves it at level 3's count, as before the budget priced contexts. Run each
way in a process
of its own (peak RSS is per process). The data is semi-compressible log lines
(bench.data.log_lines, ~4-5x): a 16 MiB pool read at a different offset by each object,
so no two objects are the same copy and nothing repeats within zstd's window.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from agent.storage import volume as volume_module
from agent.storage.frame_budget import BASE_LEVEL, FrameBudget
from agent.storage.volume import CompressionSettings, Expectation, Volume
from bench.data import log_lines

CHUNK = 1 << 20
POOL = 16 << 20
TWICE = memoryview(b"".join(islice(log_lines(seed=19), 4)) * 2)  # reads need not wrap


def chunks(index: int, size: int) -> Iterator[bytes]:
    offset = (index * 4099 * 1024) % POOL
    sent = 0
    while sent < size:
        take = min(CHUNK, size - sent)
        yield bytes(TWICE[offset : offset + take])
        offset = (offset + take) % POOL
        sent += take


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--frames", type=int, default=0, help="the frame budget (0: default)")
    parser.add_argument("--level", type=int, default=3, help="zstd level of the copies")
    parser.add_argument(
        "--unpriced",
        action="store_true",
        help="frames not priced at --level: as many frames at any level (before 2b8c2bb)",
    )
    parser.add_argument("directory", nargs="?", default=tempfile.gettempdir())
    args = parser.parse_args()
    frames = args.frames or volume_module.FRAME_BUDGET.frames
    budget = UnpricedBudget(frames) if args.unpriced else FrameBudget(frames)
    volume_module.FRAME_BUDGET = budget
    size = args.mib << 20
    with tempfile.TemporaryDirectory(dir=args.directory, prefix="bench-frame-memory-") as root:
        volume = Volume(Path(root))
        volume.initialise("vol-frame-memory")
        volume.open()
        settings = CompressionSettings(level=args.level)
        errors: list[BaseException] = []

        def copy(index: int) -> None:
            try:
                volume.write_copy(chunks(index, size), settings, Expectation(size=size))
            except BaseException as exc:  # reported below; the run fails
                errors.append(exc)

        threads = [threading.Thread(target=copy, args=(index,)) for index in range(args.objects)]
        before_mib = rss_mib()
        wall, cpu = time.perf_counter(), time.process_time()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if errors:
        raise SystemExit(f"{len(errors)} copies failed: {errors[0]!r}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.objects} x {args.mib} MiB at once, level {args.level}, budget {budget.frames}"
        f" frames ({budget.grants(args.level)} granted at the level)"
        f" (peak held {budget.peak}, {budget.refused} takes refused):"
        f" {wall:5.2f} s wall {cpu:5.2f} s CPU,"
        f" RSS {before_mib:.0f} MiB before the copies, peak {peak_mib:.0f} MiB",
        flush=True,
    )


class UnpricedBudget(FrameBudget):
    """Every frame priced at the base level, whatever the copy's level (before 2b8c2bb)."""

    def grants(self, level: int) -> int:
        return super().grants(BASE_LEVEL)

    def take(self, level: int) -> bool:
        return super().take(BASE_LEVEL)

    def give_back(self, frames: int, level: int, *, unwinding: BaseException | None = None) -> None:
        super().give_back(frames, BASE_LEVEL, unwinding=unwinding)


def rss_mib() -> float:
    """The process's resident set now (VmRSS), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    main()
