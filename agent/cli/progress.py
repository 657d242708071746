"""How `backup-restore restore` and `verify` show progress: a bar, or log lines.

Both implement agent.restore.restorer's `Progress`: `TtyProgress` redraws one line
(files, bytes, rate, ETA) at most ten times a second; `LogProgress` logs each finished
item and a last line at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO

import structlog

from agent.cli.output import human_size, printable_key
from agent.restore.restorer import ItemResult

log = structlog.get_logger("agent.restore_cli")

_EVENTS = {
    "restore": ("restore.started", "restore.item", "restore.finished"),
    "verify": ("verify.started", "verify.item", "verify.finished"),
}


class LogProgress:
    """Not a TTY: one log line per finished item, one at the end."""

    def __init__(self, kind: str = "restore") -> None:
        self._started, self._item, self._finished = _EVENTS[kind]
        self._done = 0
        self._files = 0

    def start(self, files: int, total_bytes: int) -> None:
        self._files = files
        log.info(self._started, files=files, bytes=total_bytes)

    def advance(self, nbytes: int) -> None:
        pass

    def finished(self, result: ItemResult) -> None:
        self._done += 1
        if result.ok:
            log.info(
                self._item,
                key=result.item.key,
                destination=result.destination,
                status=result.status.value,
                bytes=result.bytes,
                done=self._done,
                files=self._files,
            )

    def close(self) -> None:
        log.info(self._finished, done=self._done, files=self._files)


class TtyProgress:
    """A one-line bar on a terminal: files, bytes, rate and ETA."""

    WIDTH = 24

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._lock = threading.Lock()
        self._files = self._done = self._total = self._bytes = 0
        self._started = self._drawn = 0.0

    def start(self, files: int, total_bytes: int) -> None:
        self._files, self._total = files, total_bytes
        self._started = self.clock()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._bytes += nbytes
            self._draw()

    def finished(self, result: ItemResult) -> None:
        with self._lock:
            self._done += 1
            if not result.ok:
                self.stream.write(f"\r\x1b[2Kfailed: {printable_key(result.item.key)}\n")
            self._draw(force=True)

    def close(self) -> None:
        with self._lock:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()

    def line(self) -> str:
        elapsed = max(self.clock() - self._started, 1e-6)
        rate = self._bytes / elapsed
        fraction = self._bytes / self._total if self._total else 1.0
        filled = int(self.WIDTH * min(fraction, 1.0))
        left = (self._total - self._bytes) / rate if rate > 0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime(max(left, 0.0)))
        return (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self._done}/{self._files} files"
            f"  {human_size(self._bytes)}/{human_size(self._total)}"
            f"  {human_size(int(rate))}/s  ETA {eta}"
        )

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if force or now - self._drawn >= 0.1:
            self._drawn = now
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
