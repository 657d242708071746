"""Counting a restore's disk flushes through its `Barriers` seam (agent/restore/durable.py)."""

from __future__ import annotations

import collections
import os
import stat
from collections.abc import Callable

from agent.restore.durable import Barriers


class CountingBarriers(Barriers):
    """The real flushes, counted: syncfs calls, file fsyncs, directory fsyncs by inode, and
    `seen` (what `look` returned at each flush, in order: e.g. whether a name exists yet)."""

    def __init__(self, *, use_syncfs: bool, look: Callable[[], object] = lambda: None) -> None:
        super().__init__(use_syncfs=use_syncfs)
        self.syncs = 0
        self.file_fsyncs = 0
        self.directory_fsyncs: collections.Counter[int] = collections.Counter()
        self.look = look
        self.seen: list[tuple[str, object]] = []

    def sync_filesystem(self, fd: int) -> None:
        self.syncs += 1
        self.seen.append(("syncfs", self.look()))
        super().sync_filesystem(fd)

    def fsync(self, fd: int) -> None:
        found = os.fstat(fd)
        if stat.S_ISDIR(found.st_mode):
            self.directory_fsyncs[found.st_ino] += 1
            self.seen.append(("directory", self.look()))
        else:
            self.file_fsyncs += 1
            self.seen.append(("file", self.look()))
        super().fsync(fd)
