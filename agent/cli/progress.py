"""How `backup-restore restore` and `verify` show progress: a bar, or log lines.

Both implement agent.restore.restorer's `Progress`: `TtyProgress` is a tqdm bar (files,
bytes, rate, ETA) redrawn at most ten times a second; `LogProgress` logs each finished
item and a last line at the end.
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
