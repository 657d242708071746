"""Where the time of a large restore goes: `backup-restore restore --offline --key` of one
large copy, in rounds alternating with `zstd -d` and `zstd -d` + fsync of the same copy.

    python -m bench.large_restore setup DIR [MB]     # a volume, its journal, a config
    python -m bench.large_restore run DIR [ROUNDS] [NAME=PYTHONPATH ...]

`setup` stores MB (default 1024) of the benchmark's log lines as the agent does (frames of
`FRAME_BYTES`, a journal line), without AWS. `run` drops the copy's cached pages before
every timed run (each reads the copy from the disk, as section 3 does) and times, per
round: the CLI with this checkout, the CLI with each extra NAME=PYTHONPATH (another
checkout, e.g. `git archive` of the code before a change), `zstd -d`, and `zstd -d` then
fsync. Each line: wall seconds, CPU seconds (user + system of the child), and the ratio
`zstd -d` / it measured in the same round. Offline: the ledger's look-up is not in it
(bench section 3 times the online command).
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from agent.storage.journal import Journal
from agent.storage.volume import CompressionSettings, Expectation, Volume
from bench.data import log_lines
from bench.restore import compile_agent, drop_cached
from bench.seed import put_record

BUCKET = "bench-large"
KEY = "large/data.json"


def setup(workdir: Path, megabytes: int) -> None:
    volume_root = workdir / "volume"
    volume_root.mkdir(parents=True, exist_ok=True)
    volume = Volume(volume_root)
    marker = volume.initialise("vol-large-restore")
    size = megabytes << 20

    def chunks() -> object:
        left = size
        for block in log_lines(7):
            yield block[:left]
            left -= min(left, len(block))
            if not left:
                return

    stored = volume.write_copy(chunks(), CompressionSettings(), Expectation(size=size))  # type: ignore[arg-type]
    at = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    etag = hashlib.md5(stored.sha256.encode(), usedforsecurity=False).hexdigest()
    Journal(volume.journal_dir).append(put_record(BUCKET, KEY, at, etag, marker.volume_id, stored))
    endpoint = "http://127.0.0.1:9"  # never called: --offline
    raw = {
        "aws": {"region": "us-east-1", "endpoint_url": endpoint},
        "queue": {"url": f"{endpoint}/123456789012/unused"},
        "buckets": [BUCKET],
        "storage": {"root": str(volume_root), "min_free_bytes": 0},
        "state": {"table": "unused"},
        "logging": {"format": "json", "level": "INFO"},
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    (workdir / "sha256").write_text(stored.sha256)
    print(f"stored {size} bytes as {stored.stored_size} ({stored.sha256})")


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _timed(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    cpu = _child_cpu()
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, _child_cpu() - cpu


def run(workdir: Path, rounds: int, others: list[tuple[str, str]]) -> None:
    compile_agent()
    sha256 = (workdir / "sha256").read_text()
    copy = Volume(workdir / "volume").copy_path(sha256)
    out = workdir / "out"
    cli = str(Path(sys.executable).with_name("backup-restore"))
    variants = [("cli (this checkout)", os.environ.get("PYTHONPATH", "")), *others]
    for round_ in range(rounds):
        lines: list[tuple[str, float, float]] = []
        for name, path in variants if round_ % 2 == 0 else variants[::-1]:  # alternate
            shutil.rmtree(out, ignore_errors=True)
            os.sync()
            drop_cached(copy)
            env = dict(os.environ, PYTHONPATH=path)
            config = str(workdir / "config.yaml")
            command = [cli, "restore", "--config", config, "--offline", "--key", KEY]
            lines.append((name, *_timed([*command, "--to", str(out)], env)))
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        os.sync()
        drop_cached(copy)
        zstd = _timed(["zstd", "-d", "-q", "-f", str(copy), "-o", str(out / "z")])
        os.unlink(out / "z")
        os.sync()
        drop_cached(copy)
        started, cpu = time.perf_counter(), _child_cpu()
        subprocess.run(["zstd", "-d", "-q", "-f", str(copy), "-o", str(out / "z")], check=True)
        fd = os.open(out / "z", os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        durable = (time.perf_counter() - started, _child_cpu() - cpu)
        lines += [("zstd -d", *zstd), ("zstd -d + fsync", *durable)]
        load = os.getloadavg()[0]
        print(f"round {round_ + 1} (load {load:.1f})", flush=True)
        for name, wall, cpu in lines:
            print(f"  {name:28s} {wall:6.2f} s  CPU {cpu:5.2f} s  {zstd[0] / wall:5.2f}x zstd -d")
    shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    command, workdir = sys.argv[1], Path(sys.argv[2])
    if command == "setup":
        setup(workdir, int(sys.argv[3]) if len(sys.argv) > 3 else 1024)
    else:
        rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
        others = [tuple(arg.split("=", 1)) for arg in sys.argv[4:]]
        run(workdir, rounds, others)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
