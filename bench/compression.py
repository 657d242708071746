"""Scenario 4: ratio and speed per zstd level, one thread, on the benchmark data and on
real files that ship with every install of the agent (not only generated log lines).

Corpora (`corpora`): the Python standard library's .py files, botocore's data directory
(JSON service models, many of them already gzipped) and the shared libraries in the
virtualenv; `BENCH_CORPORA=/a,/b` replaces them with every regular file under each path
(a sample of real bucket data, for instance). Each file is compressed on its own, as the
agent stores each object, up to `limit` bytes of files per corpus. zstandard offers no
adaptive level (the CLI's `--adapt` follows the pace of its output pipe); where the CLI is
installed, `zstd --adapt` over the same files (concatenated, to /dev/null) is shown beside.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard

LEVELS = (1, 2, 3, 4, 6, 9, 12, 15)
CORPUS_LEVELS = (1, 3)
CORPUS_BYTES = 32 << 20


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


@dataclass(frozen=True)
class Corpus:
    name: str
    root: Path
    suffixes: tuple[str, ...] = ()  # empty: every file
    skip: str | None = None  # a directory name not to descend into
    largest: int | None = None  # files above this are passed over (one file is no sample)

    def files(self) -> Iterator[Path]:
        for directory, dirs, names in os.walk(self.root):
            dirs[:] = sorted(d for d in dirs if d != self.skip and d != "__pycache__")
            for name in sorted(names):
                path = Path(directory, name)
                if self.suffixes and not any(s in name for s in self.suffixes):
                    continue
                if path.is_symlink() or not path.is_file():
                    continue
                if self.largest is None or path.stat().st_size <= self.largest:
                    yield path

    def sample(self, limit: int) -> list[bytes]:
        """Whole files, in path order, until `limit` bytes."""
        taken: list[bytes] = []
        total = 0
        for path in self.files():
            data = path.read_bytes()
            if not data:
                continue
            taken.append(data)
            total += len(data)
            if total >= limit:
                break
        return taken


def corpora() -> list[Corpus]:
    """BENCH_CORPORA's paths, or the files every machine with the virtualenv has."""
    chosen = os.environ.get("BENCH_CORPORA")
    if chosen:
        return [Corpus(p, Path(p)) for p in chosen.split(",") if p.strip()]
    import botocore

    site_packages = Path(site.getsitepackages()[0])
    return [
        Corpus(
            "Python standard library, *.py",
            Path(sysconfig.get_paths()["stdlib"]),
            (".py",),
            skip="site-packages",
        ),
        Corpus("botocore/data (JSON, some .gz)", Path(botocore.__file__).parent / "data"),
        Corpus(
            f"shared libraries in {sys.prefix}, up to 4 MiB each",
            site_packages,
            (".so",),
            largest=4 << 20,
        ),
    ]


def measure_levels(sample: Path, size: int, levels: tuple[int, ...] = LEVELS) -> list[LevelResult]:
    with sample.open("rb") as handle:
        data = handle.read(size)
    return measure_files([data], levels)


def measure_files(files: list[bytes], levels: tuple[int, ...] = CORPUS_LEVELS) -> list[LevelResult]:
    """Each file compressed on its own (as an object is) and decompressed, one thread."""
    results = []
    size = sum(len(f) for f in files)
    for level in levels:
        compressor = zstandard.ZstdCompressor(level=level, threads=0)
        started = time.perf_counter()
        frames = [compressor.compress(data) for data in files]
        compressed_at = time.perf_counter()
        decompressor = zstandard.ZstdDecompressor()
        for frame in frames:
            decompressor.decompress(frame)
        done = time.perf_counter()
        results.append(
            LevelResult(
                level,
                size,
                sum(len(f) for f in frames),
                compressed_at - started,
                done - compressed_at,
            )
        )
    return results


def cli_adapt(files: list[bytes]) -> tuple[float, float] | None:
    """`zstd --adapt -T1` over the files concatenated: (ratio, seconds), None without zstd."""
    zstd = shutil.which("zstd")
    if zstd is None:
        return None
    data = b"".join(files)
    started = time.perf_counter()
    done = subprocess.run(
        [zstd, "--adapt", "-T1", "-q", "-c"], input=data, capture_output=True, check=True
    )
    seconds = time.perf_counter() - started
    return len(data) / max(1, len(done.stdout)), seconds
