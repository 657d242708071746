"""What a benchmark run measures, from the environment (all optional)."""

from __future__ import annotations

import os
from dataclasses import dataclass

SECTIONS = ("large", "small", "restore", "compression", "latency", "find", "fleet")

HELP = """\
BENCH_SCALE=0.1            scale every size and count (default 1: 1 GiB, 10,000 objects)
BENCH_LARGE_MB=1024        the large object; RSS is also measured at BENCH_RSS_MB=64
BENCH_SMALL_COUNT=10000    small copies section 3 restores, of BENCH_SMALL_KB=4 KiB
BENCH_RATE_COUNT=1500      small objects per rate run of section 2 (agent, agent without
                           receive_ahead, ceiling loop; the rate is steady long before)
BENCH_WORKERS=1,2,4,8      worker counts for the small-object runs
BENCH_SMALL_ROUNDS=3       rounds the rate runs are split into, agent and loop alternating
                           (agent, loop / loop, agent ...): the ratio's median and spread
BENCH_RECEIVE_AHEAD=1      also run the agent without receive_ahead (the default receives
                           ahead; a run after a crash does not); 0 to skip
BENCH_QUEUE_DEPTH=50       at most this many small-object messages outstanding
BENCH_LATENCY_RATE=20      uploads per second for BENCH_LATENCY_SECONDS=30
BENCH_FIND_RECORDS=100000  records `find` searches, online and offline (section 6)
BENCH_FLEET_AGENTS=1,2,4   agent processes on one queue and table (section 7), each
                           backing up BENCH_FLEET_OBJECTS=150 objects of BENCH_FLEET_KB=4 KiB
                           with BENCH_FLEET_WORKERS=1 worker(s), at most BENCH_FLEET_DEPTH=10
                           messages outstanding per agent, every AWS call delayed
                           BENCH_FLEET_LATENCY_MS=15 by a proxy
BENCH_CORPORA=/a,/b        section 4's real files (default: the Python stdlib's .py files,
                           botocore's data, the venv's shared libraries)
BENCH_ONLY=large,small     sections to run (large, small, restore, compression, latency,
                           find, fleet)
BENCH_ENDPOINT=http://…    an existing endpoint instead of a fresh moto_server
BENCH_WORKDIR=/path        keep data and volumes there (default: a temp dir, removed)
BENCH_RESTORE_CMD='…'      restore through a command instead of Volume.copy_chunks
BENCH_PROFILE=1            py-spy each agent process and print its top frames
"""


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@dataclass(frozen=True)
class Settings:
    scale: float
    large_mb: int
    rss_mb: int
    small_count: int
    rate_count: int
    small_kb: int
    workers: tuple[int, ...]
    receive_ahead: bool
    queue_depth: int
    latency_rate: float
    latency_seconds: float
    sections: tuple[str, ...]
    endpoint: str | None
    workdir: str | None
    restore_cmd: str | None
    find_records: int
    fleet_agents: tuple[int, ...] = (1, 2, 4)
    fleet_objects: int = 150
    fleet_kb: int = 4
    fleet_workers: int = 1
    fleet_depth: int = 10
    fleet_latency_ms: float = 15.0
    small_rounds: int = 3

    @classmethod
    def from_env(cls) -> Settings:
        scale = _number("BENCH_SCALE", 1.0)
        large_mb = max(1, int(_number("BENCH_LARGE_MB", 1024 * scale)))
        only = os.environ.get("BENCH_ONLY", "")
        sections = tuple(s.strip() for s in only.split(",") if s.strip()) or SECTIONS
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"BENCH_ONLY: unknown sections {sorted(unknown)}; known: {SECTIONS}")
        small_count = max(10, int(_number("BENCH_SMALL_COUNT", 10_000 * scale)))
        return cls(
            scale=scale,
            large_mb=large_mb,
            rss_mb=min(large_mb, int(_number("BENCH_RSS_MB", 64))),
            small_count=small_count,
            rate_count=min(small_count, int(_number("BENCH_RATE_COUNT", 1500))),
            small_kb=int(_number("BENCH_SMALL_KB", 4)),
            workers=tuple(int(w) for w in os.environ.get("BENCH_WORKERS", "1,2,4,8").split(",")),
            receive_ahead=os.environ.get("BENCH_RECEIVE_AHEAD", "1") != "0",
            queue_depth=int(_number("BENCH_QUEUE_DEPTH", 50)),
            latency_rate=_number("BENCH_LATENCY_RATE", 20),
            latency_seconds=max(2.0, _number("BENCH_LATENCY_SECONDS", 30 * min(1.0, scale))),
            sections=sections,
            endpoint=os.environ.get("BENCH_ENDPOINT") or None,
            workdir=os.environ.get("BENCH_WORKDIR") or None,
            restore_cmd=os.environ.get("BENCH_RESTORE_CMD") or None,
            find_records=max(100, int(_number("BENCH_FIND_RECORDS", 100_000 * scale))),
            fleet_agents=tuple(
                int(n) for n in os.environ.get("BENCH_FLEET_AGENTS", "1,2,4").split(",")
            ),
            fleet_objects=max(10, int(_number("BENCH_FLEET_OBJECTS", 150 * scale))),
            fleet_kb=int(_number("BENCH_FLEET_KB", 4)),
            fleet_workers=int(_number("BENCH_FLEET_WORKERS", 1)),
            fleet_depth=int(_number("BENCH_FLEET_DEPTH", 10)),
            fleet_latency_ms=_number("BENCH_FLEET_LATENCY_MS", 15),
            small_rounds=max(1, int(_number("BENCH_SMALL_ROUNDS", 3))),
        )
