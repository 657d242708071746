"""Staging small files in worker processes: a restore of many small files on every CPU.

A small file's restore is ~25 short syscalls and some Python around each: CPU-bound, and
threads share one interpreter lock, so one process restores them at one CPU's speed
(issue 19, docs/benchmarks.md). `ProcessStaging` forks worker processes that *stage*
runs of files (`DirectoryTarget.stage`: write the temp file, verify every byte against the
record's SHA-256) and send back what the parent needs to name them. Everything else stays
in the parent: which runs are started (a stop request skips the rest), the commit (the
barriers and the names, durable.py), every result, log line and exit code.

What keeps it safe:

* **Fork only from a single-threaded process** (`usable`): the children get a copy of the
  parent with no lock held by a thread that does not exist in them. The executor forks all
  its children at the first submit, before it starts its own manager thread (Python 3.11,
  the "fork" start method).
* **Only where the name barrier is `syncfs`**: one syncfs of the filesystem covers every
  entry a child makes without the parent knowing them (without syncfs, threads stage, as
  before). The plan's directories are made by the parent before the fork
  (`DirectoryTarget.prepare`), so every child knows which ones this run made; the ones that
  were there are swept of a dead restore's temp files then, by the parent, and never by a
  child (its note of what was swept is its own: a child that met a directory late swept it
  after the parent had named files there).
* **No shared names**: a child names its temp file by the file's place in the plan
  (`SERIAL_BASE + index`), never by a counter it shares with its siblings; the parent knows
  every name, so it can remove what a dead child left.
* **Errors as today, per file**: a child turns a file's `BackupAgentError` / `OSError` into
  the same text the threads report; the parent logs it (`restore.failed`) and counts it.
* **A child that dies** (killed, out of memory) breaks the pool: the parent removes the temp
  files the unfinished runs may have left and stages those runs itself, in its own thread
  (`restore.worker_lost` is logged). Nothing of a run is reported until the parent has it.
* **Ctrl-C**: the children ignore SIGINT; the parent's handler decides (restorer.py).
* **kill -9 of the parent**: each child asks the kernel to kill it when its parent dies
  (`PR_SET_PDEATHSIG`), so no child is left waiting on a pipe it holds both ends of; its
  temp files are what a crash leaves (a restore an hour later removes them, durable.py).
* **Memory**: the plan is not sent to the children (they have the parent's copy, made at
  the fork); each run's answer is a few tuples per file.
"""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import structlog

from agent.errors import BackupAgentError
from agent.restore.plan import Item
from agent.restore.targets import DirectoryTarget, Staged, Status

# A child names file `index` of the plan `SERIAL_BASE + index`; the parent's own counter
# (files it stages itself) never gets near it.
SERIAL_BASE = 1 << 40
MIN_FILES = 256  # below this, forking costs more than it spreads

log = structlog.get_logger("agent.restore")


@dataclass(frozen=True, slots=True)
class Written:
    """A file a child staged: its temp name and inode, and the bytes it wrote."""

    temp: str
    inode: tuple[int, int]
    written: int

    def __reduce__(self) -> tuple[type[Written], tuple[str, tuple[int, int], int]]:
        # pickled by its fields: a slots dataclass's own state calls dataclasses.fields()
        # per object on both ends (0.1 s of CPU for 10,000 files, 0.04 s this way)
        return (Written, (self.temp, self.inode, self.written))


@dataclass(frozen=True, slots=True)
class Decided:
    """A file a child did not stage: UNCHANGED, or FAILED with `error` (the text a thread
    would have reported)."""

    status: Status
    written: int
    error: str | None = None

    def __reduce__(self) -> tuple[type[Decided], tuple[Status, int, str | None]]:
        return (Decided, (self.status, self.written, self.error))  # as Written's


Outcome = Written | Decided


@dataclass(frozen=True, slots=True)
class _Shared:
    target: DirectoryTarget
    items: Sequence[Item]
    parent: int  # the pid that forks the children


_shared: _Shared | None = None  # set in the parent just before the fork; the children's copy


def usable(target: object, files: int, cpus: int) -> bool:
    """Whether a plan of `files` small files into `target` may be staged by processes."""
    return (
        cpus > 1
        and files >= MIN_FILES
        and isinstance(target, DirectoryTarget)
        and target.barriers.whole_filesystem
        and sys.platform.startswith("linux")
        and threading.active_count() == 1
    )


def error_text(exc: BackupAgentError | OSError, destination: str) -> str:
    """What a failed file reports: the agent's message, or the OS error with the path."""
    return str(exc) if isinstance(exc, BackupAgentError) else f"{destination}: {exc}"


def stage_run(
    target: DirectoryTarget, items: Sequence[Item], start: int, stop: int
) -> list[Outcome]:
    """Stage files `start` to `stop` of `items` (in a child: named by their place in the
    plan). An unexpected error removes the temp files of the run and is raised."""
    done: list[Outcome] = []
    staged: list[Staged] = []
    try:
        for index in range(start, stop):
            item = items[index]
            written = 0

            def on_bytes(nbytes: int) -> None:
                nonlocal written
                written += nbytes

            try:
                one = target.stage(item, on_bytes, serial=SERIAL_BASE + index)
            except (BackupAgentError, OSError) as exc:
                done.append(
                    Decided(Status.FAILED, written, error_text(exc, target.destination(item)))
                )
                continue
            if isinstance(one, Status):
                done.append(Decided(one, written))
            else:
                staged.append(one)
                done.append(Written(one.temp, one.inode, written))
    except BaseException:
        target.discard(staged)
        raise
    return done


def _in_child(start: int, stop: int) -> list[Outcome]:
    if _shared is None:  # pragma: no cover - a child is always forked after `_shared` is set
        raise RuntimeError("restore worker started without a plan")
    return stage_run(_shared.target, _shared.items, start, stop)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _child_started() -> None:
    # the parent's objects (the plan, its records) stay as they are in the child: the cyclic
    # collector leaves them out of its passes, which walked them all (and wrote to their
    # pages, copying them) for nothing
    gc.freeze()
    # Ctrl-C is the parent's to handle. SIGTERM keeps its default: the pool ends the other
    # children with it when one dies (concurrent.futures' terminate), and a child that
    # outlived that would write temp files after the parent removed its lost runs' ones; a
    # unit's stop that reaches a child makes a lost worker, which the parent handles
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # pragma: no cover
        os._exit(1)  # the parent stages the runs itself (a lost worker)
    if _shared is None or os.getppid() != _shared.parent:  # it died before the prctl
        os._exit(1)


class ProcessStaging:
    """A pool of forked processes staging runs of `items` into `target` (a context manager:
    the pool is shut down, waiting for runs under way, on the way out)."""

    def __init__(
        self,
        target: DirectoryTarget,
        items: Sequence[Item],
        processes: int,
        stop: threading.Event | None = None,
    ) -> None:
        self.target = target
        self.items = items
        self.processes = processes
        self.stop = stop
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProcessStaging:
        global _shared
        # its directories made (and recorded) here, not in a child; none after a stop request
        self.target.prepare(self.items, self.stop)
        _shared = _Shared(self.target, self.items, os.getpid())
        self._pool = ProcessPoolExecutor(
            self.processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_child_started,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        global _shared
        self.shutdown()
        self._pool = None
        _shared = None

    def start(self) -> bool:
        """Fork the children now (the executor forks them all at its first task); False if
        one died at once (then threads do the work)."""
        try:
            self.submit(0, 0).result()
        except BrokenProcessPool:
            log.warning("restore.worker_lost", files=0)
            return False
        return True

    def shutdown(self) -> None:
        """Let the runs under way finish, drop the others (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, start: int, stop: int) -> Future[list[Outcome]]:
        if self._pool is None:
            raise RuntimeError("ProcessStaging used outside its with block")
        return self._pool.submit(_in_child, start, stop)

    def leftovers(self, start: int, stop: int) -> list[Staged]:
        """The temp files a run may have left (a child that died mid-run), to discard."""
        return [
            Staged(item, _parts(item), self.target.temp_name(SERIAL_BASE + index), (0, 0))
            for index, item in enumerate(self.items[start:stop], start=start)
        ]


def _parts(item: Item) -> tuple[str, ...]:
    if item.placement is None:  # pragma: no cover - directory restores place every item
        raise ValueError("directory restores need placed items (restore.place)")
    return item.placement.parts
