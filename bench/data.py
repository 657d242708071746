"""Benchmark data: semi-compressible log lines, generated in blocks, never held whole in memory."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

BLOCK = 4 << 20
SERVICES = ["api", "billing", "auth", "search", "ingest", "reports", "mailer", "cdn-edge"]
LEVELS = ["INFO"] * 12 + ["DEBUG"] * 5 + ["WARN"] * 2 + ["ERROR"]
METHODS = ["GET"] * 6 + ["POST"] * 3 + ["PUT", "DELETE"]
PATHS = [
    "/v1/users/{n}",
    "/v1/users/{n}/orders",
    "/v1/orders/{n}/items",
    "/v2/search?q=item-{n}&page=2",
    "/v1/invoices/{n}.pdf",
    "/healthz",
    "/v1/sessions/{n}/refresh",
    "/static/app.{n}.js",
]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "python-requests/2.32", "Go-http/1.1"]


def log_lines(seed: int) -> Iterator[bytes]:
    """Endless blocks of JSON log lines: repetitive structure, random ids and numbers.

    zstd -3 compresses them about 4-5x, like real application logs; ids from a seeded PRNG
    keep every block distinct (no long-range repeats to flatter the compressor).
    """
    rng = random.Random(seed)
    second = 1_790_000_000
    while True:
        lines = []
        size = 0
        while size < BLOCK:
            second += rng.random() < 0.05
            path = rng.choice(PATHS).format(n=rng.randrange(1, 500_000))
            line = (
                f'{{"ts":{second}.{rng.randrange(1000):03d},"level":"{rng.choice(LEVELS)}",'
                f'"service":"{rng.choice(SERVICES)}","request_id":"{rng.getrandbits(64):016x}",'
                f'"method":"{rng.choice(METHODS)}","path":"{path}",'
                f'"status":{rng.choice((200, 200, 200, 201, 204, 304, 404, 500))},'
                f'"ms":{rng.randrange(1, 2500)},"bytes":{rng.randrange(0, 90_000)},'
                f'"ua":"{rng.choice(AGENTS)}"}}\n'
            )
            lines.append(line)
            size += len(line)
        yield "".join(lines).encode()


def write_data_file(path: Path, size: int, seed: int = 7) -> Path:
    """Write `size` bytes of log lines to `path` once (kept across runs of the same size)."""
    if path.exists() and path.stat().st_size == size:
        return path
    temp = path.with_suffix(".part")
    with temp.open("wb") as out:
        left = size
        for block in log_lines(seed):
            out.write(block[:left])
            left -= min(left, len(block))
            if not left:
                break
    os.replace(temp, path)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def small_payload(index: int, size: int, seed: int = 11) -> bytes:
    """A distinct `size`-byte object (log lines, so it compresses like the large one)."""
    rng = random.Random(seed * 1_000_003 + index)
    head = f"object {index}\n".encode()
    body = bytearray(head)
    while len(body) < size:
        body += (
            f'{{"seq":{index},"id":"{rng.getrandbits(64):016x}","v":{rng.randrange(10**6)}}}\n'
        ).encode()
    return bytes(body[:size])
