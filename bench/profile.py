"""Optional py-spy profile of each agent process (BENCH_PROFILE=1; `pip install py-spy`).

Each agent run writes collapsed stacks to `<workdir>/<scenario>/logs/profile-agent-N.txt`
(view them with speedscope or flamegraph.pl); the top frames are printed after the run.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path


def enabled() -> bool:
    return os.environ.get("BENCH_PROFILE", "") not in ("", "0")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    def __init__(self, pid: int, output: Path) -> None:
        self.output = output
        command = py_spy()
        if command is None:
            raise SystemExit(
                "BENCH_PROFILE is set but py-spy is not installed (pip install py-spy)"
            )
        self._process = subprocess.Popen(
            [
                command,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--threads",
                "--output",
                str(output),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)
        self._process.wait(30)


def top_frames(raw: Path, count: int = 15) -> list[tuple[float, str]]:
    """The frames present in the most samples (inclusive), as shares of active samples."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        total += int(samples)
        for frame in set(stack.split(";")):
            if "agent/" in frame:
                inclusive[frame] += int(samples)
    return [(n / total, frame) for frame, n in inclusive.most_common(count)] if total else []
