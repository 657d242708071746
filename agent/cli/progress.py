"""How `backup-restore restore` and `verify` show progress: a bar, or log lines.

Both implement agent.restore.restorer's `Progress`: `TtyProgress` is a tqdm bar (files,
bytes, rate, ETA) redrawn at most ten times a second; `LogProgress` logs a progress
line every few seconds and a last line at the end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO, Any

import structlog
from tqdm import tqdm

from agent.cli.output import human_size, printable_key
from agent.restore.restorer import ItemResult

log = structlog.get_logger("agent.restore_cli")

_EVENTS = {
    "restore": ("restore.started", "restore.progress", "restore.finished"),
    "verify": ("verify.started", "verify.progress", "verify.finished"),
}
LOG_EVERY_SECONDS = 5.0


class LogProgress:
    """Not a TTY: a progress line at most every `every` seconds, one at the end.

    Not one per file: a line per file cost more than restoring a small file (py-spy of a
    restore of 2,000 files of 4 KiB, docs/benchmarks.md), and a million-file restore
    would log a million lines. Each file's outcome is in `--json`'s output; a failure is
    also logged on its own (`restore.failed`)."""

    def __init__(
        self,
        kind: str = "restore",
        clock: Callable[[], float] = time.monotonic,
        every: float = LOG_EVERY_SECONDS,
    ) -> None:
        self._started, self._progress, self._finished = _EVENTS[kind]
        self._clock = clock
        self._every = every
        self._lock = threading.Lock()
        self._done = self._failed = self._files = self._bytes = 0
        self._next = 0.0

    def start(self, files: int, total_bytes: int) -> None:
        self._files = files
        self._next = self._clock() + self._every
        log.info(self._started, files=files, bytes=total_bytes)

    def advance(self, nbytes: int) -> None:
        pass

    def finished(self, result: ItemResult) -> None:
        with self._lock:
            self._done += 1
            self._failed += not result.ok
            self._bytes += result.bytes
            now = self._clock()
            if now < self._next:
                return
            self._next = now + self._every
            fields = self._fields()
        log.info(self._progress, **fields)

    def close(self) -> None:
        with self._lock:
            fields = self._fields()
        log.info(self._finished, **fields)

    def _fields(self) -> dict[str, int]:
        return {
            "done": self._done,
            "files": self._files,
            "failed": self._failed,
            "bytes": self._bytes,
        }


class _Bar(tqdm):  # type: ignore[type-arg]  # a bar of bytes: no iterable, no item type
    """tqdm with one more field for the bar format: `sizes`, the bytes done and in all and
    the rate in this project's units (tqdm's own mix 1024 and 1000)."""

    sizes = ""

    @property
    def format_dict(self) -> dict[str, Any]:
        return {**super().format_dict, "sizes": self.sizes}


class TtyProgress:
    """A bar on a terminal, drawn by tqdm: files, bytes, rate and ETA.

    tqdm fits the bar to the terminal's width (and follows a resize), writes an ETA past
    24 hours as 27:46:40, and redraws at most ten times a second. Not on a terminal, or with
    -q, `Runtime.progress` picks `LogProgress` or `NoProgress` instead. `clock` is for
    tests (tqdm's own timer is replaced by it)."""

    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {sizes}  ETA {remaining}"

    def __init__(self, stream: IO[str], clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.clock = clock
        self._lock = threading.Lock()
        self._files = self._done = self._bytes = 0
        self._bar: _Bar | None = None

    def start(self, files: int, total_bytes: int) -> None:
        self._files = files
        bar = _Bar(
            total=total_bytes,
            desc=f"0/{files} files",
            file=self.stream,
            dynamic_ncols=True,
            mininterval=0.1,
            smoothing=0,  # the ETA from the average rate since the start
            bar_format=self.BAR_FORMAT,
            delay=0,
        )
        bar._time = self.clock  # type: ignore[attr-defined]  # tqdm's timer, for tests
        bar.reset(total=total_bytes)
        self._bar = bar
        self._describe()

    def advance(self, nbytes: int) -> None:
        with self._lock:
            self._bytes += nbytes
            if self._bar is not None:
                self._describe()
                self._bar.update(nbytes)

    def finished(self, result: ItemResult) -> None:
        with self._lock:
            self._done += 1
            if self._bar is None:
                return
            if not result.ok:
                self._bar.write(f"failed: {printable_key(result.item.key)}", file=self.stream)
            self._describe()
            self._bar.refresh()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._describe()
                self._bar.close()
            self.stream.flush()

    def line(self) -> str:
        """What the bar shows now (without terminal control characters)."""
        return str(self._bar) if self._bar is not None else ""

    def _describe(self) -> None:
        assert self._bar is not None
        elapsed = max(self.clock() - self._bar.start_t, 1e-6)
        self._bar.set_description_str(f"{self._done}/{self._files} files", refresh=False)
        self._bar.sizes = (
            f"{human_size(self._bytes)}/{human_size(int(self._bar.total or 0))}"
            f"  {human_size(int(self._bytes / elapsed))}/s"
        )
