"""syncfs(2) through ctypes (agent/storage/syscalls.py), and the snapshot flush's use of it."""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from pathlib import Path

import pytest

from agent.snapshots import flush
from agent.storage import syscalls


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs is Linux's")
def test_syncfs_is_found_and_flushes_a_real_filesystem(tmp_path: Path) -> None:
    assert syscalls.SYNCFS is not None
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        syscalls.syncfs(fd, syscalls.SYNCFS)  # no error on a healthy filesystem
    finally:
        os.close(fd)


def test_a_failing_syncfs_raises_its_errno() -> None:
    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)  # what the C library leaves for use_errno functions
        return -1

    with pytest.raises(OSError) as raised:
        syscalls.syncfs(3, failing)
    assert raised.value.errno == errno.EIO
    assert "syncfs" in str(raised.value)


def test_without_syncfs_the_call_is_refused() -> None:
    with pytest.raises(RuntimeError, match="not available"):
        syscalls.syncfs(3, None)


def test_the_snapshot_flush_names_the_root_when_syncfs_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(fd: int) -> int:
        ctypes.set_errno(errno.EIO)
        return -1

    monkeypatch.setattr(syscalls, "SYNCFS", failing)
    with pytest.raises(OSError) as raised:
        flush.sync_filesystem(tmp_path)
    assert raised.value.errno == errno.EIO
    assert str(tmp_path) in str(raised.value)


def test_the_snapshot_flush_only_syncs_where_syncfs_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(syscalls, "SYNCFS", None)
    flush.sync_filesystem(tmp_path)  # os.sync() alone: no error, nothing opened
