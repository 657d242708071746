"""What a durable write of 1 GiB costs on this disk, next to `zstd -d`'s page-cache writes.

`python -m bench.disk_write [DIR]` (default: the system's temp directory) writes 1 GiB of
incompressible bytes three ways, twice each: with `agent.storage.direct.DirectWriter`
(O_DIRECT, as a large restore does) then fsync; plain writes then fsync; plain writes
without fsync (what `zstd -d` does). The wall time of the first two bounds any restore that
must leave its file durable (issue 19, docs/benchmarks.md "In short").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable

from agent.storage.direct import DirectWriter

CHUNK = os.urandom(4 << 20)
CHUNKS = 256  # 1 GiB


def direct(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    writer = DirectWriter.open(fd)
    if writer is None:
        raise SystemExit(f"{path}: the filesystem refuses O_DIRECT")
    with writer:
        for _ in range(CHUNKS):
            writer.write(CHUNK)
    os.fsync(fd)
    os.close(fd)


def plain(path: str, durable: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for _ in range(CHUNKS):
        os.write(fd, CHUNK)
    if durable:
        os.fsync(fd)
    os.close(fd)


def main() -> None:
    directory = sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir()
    ways: list[tuple[str, Callable[[str], None]]] = [
        ("O_DIRECT + fsync", direct),
        ("plain + fsync", plain),
        ("plain, no fsync", lambda path: plain(path, durable=False)),
    ]
    for _ in range(2):
        for name, write in ways:
            path = os.path.join(directory, "bench-disk-write")
            wall, cpu = time.perf_counter(), time.process_time()
            write(path)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            print(f"{name:18s} {wall:5.2f} s wall  {cpu:5.2f} s CPU", flush=True)
            os.unlink(path)
            os.sync()


if __name__ == "__main__":
    main()
