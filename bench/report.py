"""Printing figures as they come, and the one-line summary at the end."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from datetime import UTC, datetime

import psutil


class Report:
    def __init__(self) -> None:
        self.summary: list[str] = []

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def line(self, label: str, value: str, note: str = "") -> None:
        print(f"  {label:<44} {value:>18}  {note}".rstrip(), flush=True)

    def text(self, message: str) -> None:
        print(f"  {message}", flush=True)

    def add_summary(self, part: str) -> None:
        self.summary.append(part)

    def finish(self) -> str:
        line = "; ".join(self.summary) or "nothing measured"
        print(f"\n{line}", flush=True)
        return line


def machine() -> list[tuple[str, str]]:
    zstd = shutil.which("zstd")
    zstd_version = (
        subprocess.run([zstd, "-V"], capture_output=True, text=True).stdout.strip() if zstd else "-"
    )
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("cpus", f"{os.cpu_count()} (load {', '.join(f'{x:.1f}' for x in os.getloadavg())})"),
        ("memory", f"{psutil.virtual_memory().total / (1 << 30):.1f} GiB"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("zstd", zstd_version),
        ("kernel", platform.release()),
    ]
