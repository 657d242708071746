"""A size-limited tmpfs as the backup volume: a real ENOSPC, and space given back on demand.

Mounting needs root (or a private mount namespace, which only a child process can use:
tests/unit/test_store.py runs its writer inside `unshare -rm`). Tests that need the mount in
their own process skip, saying why, when it is refused.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1 << 20


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs at `path`, unmounted afterwards; skips when mounting is refused."""
    if os.geteuid() != 0:
        pytest.skip(
            "mounting a tmpfs the test can also see needs root; unprivileged, only the agent's"
            " own `unshare -rm` namespace could mount it (not wired up)"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mount not permitted here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, size: str) -> None:
    """Resize a mounted tmpfs in place (stands in for growing the EBS volume)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def fill(root: Path, leave: int, name: str = "filler.bin") -> Path:
    """A file taking all free space of `root` but `leave` bytes."""
    filler = root / name
    free = shutil.disk_usage(root).free
    with filler.open("wb") as handle:
        remaining = free - leave
        while remaining > 0:
            chunk = min(remaining, MiB)
            handle.write(b"\0" * chunk)
            remaining -= chunk
    return filler
