"""Scenario 3: restore speed of stored copies, next to `zstd -d` on the same copies.

`Restorer` is the hook: `VolumeRestorer` decompresses through `Volume.open_copy` (the path
restore uses). Once the `backup-restore` CLI lands, set BENCH_RESTORE_CMD to a command
template and the same figures come from it, e.g.
``BENCH_RESTORE_CMD='backup-restore object --config {config} --sha256 {sha256} --to {dest}'``
(placeholders: config, bucket, key, sha256, dest).
"""

from __future__ import annotations

import resource
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.store import READ_CHUNK, Volume
from bench.timing import run_timed


@dataclass(frozen=True)
class Copy:
    sha256: str
    size: int
    bucket: str = ""
    key: str = ""


class Restorer(Protocol):
    name: str

    def restore(self, copy: Copy, dest: Path) -> None: ...


class VolumeRestorer:
    """Decompress a copy to a file with `Volume.open_copy`, as a restore does."""

    name = "Volume.open_copy"

    def __init__(self, volume: Volume) -> None:
        self.volume = volume

    def restore(self, copy: Copy, dest: Path) -> None:
        with self.volume.open_copy(copy.sha256) as reader, dest.open("wb") as out:
            while chunk := reader.read(READ_CHUNK):
                out.write(chunk)


class CommandRestorer:
    """Any restore command, from a template (see the module docstring)."""

    def __init__(self, template: str, config: Path) -> None:
        self.template = template
        self.config = config
        self.name = template.split()[0]

    def restore(self, copy: Copy, dest: Path) -> None:
        command = self.template.format(
            config=self.config, bucket=copy.bucket, key=copy.key, sha256=copy.sha256, dest=dest
        )
        subprocess.run(shlex.split(command), check=True, stdout=subprocess.DEVNULL)


@dataclass(frozen=True)
class Timing:
    seconds: float
    cpu: float  # CPU seconds of whoever did the work (this process, or the child)


def restore_all(restorer: Restorer, copies: Sequence[Copy], target: Path) -> Timing:
    """Restore every copy into `target`. Checks the sizes afterwards."""
    target.mkdir(parents=True, exist_ok=True)
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    for index, copy in enumerate(copies):
        restorer.restore(copy, target / f"{index:05d}")
    seconds = time.perf_counter() - started
    cpu = _cpu(resource.RUSAGE_SELF) + _cpu(resource.RUSAGE_CHILDREN) - cpu
    for index, copy in enumerate(copies):
        if (target / f"{index:05d}").stat().st_size != copy.size:
            raise RuntimeError(f"{restorer.name} restored the wrong size for {copy.sha256}")
    return Timing(seconds, cpu)


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def zstd_decompress_all(volume: Volume, copies: Sequence[Copy], target: Path) -> Timing:
    """`zstd -d` of the same copies into `target` (one process; many files via --filelist)."""
    target.mkdir(parents=True, exist_ok=True)
    cpu = _cpu(resource.RUSAGE_CHILDREN)
    if len(copies) == 1:
        path = volume.copy_path(copies[0].sha256)
        command = ["zstd", "-d", "-q", "-f", str(path), "-o", str(target / "00000")]
    else:
        filelist = target.parent / f"{target.name}.filelist"
        filelist.write_text("".join(f"{volume.copy_path(c.sha256)}\n" for c in copies))
        command = [
            "zstd",
            "-d",
            "-q",
            "-f",
            "--filelist",
            str(filelist),
            "--output-dir-flat",
            str(target),
        ]
    seconds = run_timed(command)
    return Timing(seconds, _cpu(resource.RUSAGE_CHILDREN) - cpu)
