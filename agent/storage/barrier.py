"""The write barrier: a readers-writer gate between copies and snapshots.

Every copy holds the barrier *shared* for its short critical section (rename into
place → journal line → DynamoDB record). A snapshot holds it *exclusive* only while it
flushes the filesystem and starts CreateSnapshot: in-flight copies finish their
critical section first, new ones wait at the gate, and the journal position read under
the barrier describes exactly what the snapshot holds.

The gate works across processes (the daemon's writers and a `backup-agent snapshot`
run from a shell) and across threads: it is two `flock(2)` files on the volume, each
holder opening its own descriptor. Writers are preferred: the snapshot takes the
*gate* file exclusively first, so new copies queue behind it while the copies already
inside the *room* finish. The kernel drops the locks of a process that dies, so a
killed snapshot never leaves the agent blocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

import structlog

from agent.errors import RetryableError

log = structlog.get_logger("agent.barrier")

GATE_NAME = ".backup-agent-barrier.gate"
ROOM_NAME = ".backup-agent-barrier.room"
DEFAULT_EXCLUSIVE_TIMEOUT = 60.0


class BarrierTimeout(RetryableError):
    """Copies did not leave the critical section in time; the snapshot was not started."""


class Barrier(Protocol):
    def shared(self) -> AbstractContextManager[None]: ...

    def exclusive(self, timeout: float = ...) -> AbstractContextManager[None]: ...


class NoBarrier:
    """The default for callers that never snapshot: both sides are free."""

    def shared(self) -> AbstractContextManager[None]:
        return contextlib.nullcontext()

    def exclusive(self, timeout: float = DEFAULT_EXCLUSIVE_TIMEOUT) -> AbstractContextManager[None]:
        return contextlib.nullcontext()


class WriteBarrier:
    """The flock-based gate in `directory` (the backup root)."""

    def __init__(
        self,
        directory: Path,
        *,
        poll_seconds: float = 0.01,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.gate_path = Path(directory) / GATE_NAME
        self.room_path = Path(directory) / ROOM_NAME
        self._poll = poll_seconds
        self._monotonic = monotonic
        self._sleep = sleep

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Pass the gate (waiting while a snapshot holds it), then stay in the room."""
        room = _open(self.room_path)
        try:
            gate = _open(self.gate_path)
            try:
                fcntl.flock(gate, fcntl.LOCK_SH)
                fcntl.flock(room, fcntl.LOCK_SH)
            finally:
                os.close(gate)  # releases the gate: only the room is held from here
            yield
        finally:
            os.close(room)

    @contextlib.contextmanager
    def exclusive(self, timeout: float = DEFAULT_EXCLUSIVE_TIMEOUT) -> Iterator[None]:
        """Close the gate, wait for the room to empty; BarrierTimeout after `timeout` s."""
        started = self._monotonic()
        deadline = started + timeout
        gate = _open(self.gate_path)
        try:
            self._lock_before(gate, deadline, "new copies still entering")
            room = _open(self.room_path)
            try:
                self._lock_before(room, deadline, "copies still in their critical section")
                waited = self._monotonic() - started
                log.info("barrier.closed", waited_seconds=round(waited, 3))
                try:
                    yield
                finally:
                    held = self._monotonic() - started - waited
                    log.info("barrier.opened", held_seconds=round(held, 3))
            finally:
                os.close(room)
        finally:
            os.close(gate)

    def _lock_before(self, fd: int, deadline: float, what: str) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if self._monotonic() >= deadline:
                    raise BarrierTimeout(f"write barrier not reached in time: {what}") from None
                self._sleep(self._poll)


def _open(path: Path) -> int:
    # Read-only is enough for flock; O_CREAT so either side may come first.
    return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
