"""Restores: run a plan against a target in a thread pool, one result per item.

`Restorer.run` hands each planned item (plan.py) to a target (targets.py) — a directory
or S3 — on a pool of threads, and reports progress as bytes arrive. A corrupt or missing
copy fails its item with the key and version named, and the other items carry on; a
stop request skips the items not yet started. `Summary` counts what happened.

A target that stages (a directory, durable.py) gets the plan in batches of at most
`BATCH_FILES` files and `BATCH_BYTES` bytes: the pool writes the batch's files to temp
names, then one commit makes them durable under their names. A file is reported (and
counted restored) only once committed; a stop request lets the batch under way commit.
A worker takes a run of files at a time (`TASK_FILES`, `TASK_BYTES`), and a plan of small
files gets at most one thread per CPU (`threads_for`): for 4 KiB files the hand-offs, not
the writes, were the cost (issue 19, docs/benchmarks.md). On a machine with several CPUs such
a plan is staged by forked worker processes instead (`processes_for`, workers.py): the
parent keeps the commit, the results and the decision; the children only write and verify.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from agent.errors import BackupAgentError
from agent.restore.plan import Item, Plan
from agent.restore.targets import DirectoryTarget, Staged, Status, Target
from agent.restore.workers import Decided, Outcome, ProcessStaging, Written, error_text, usable

log = structlog.get_logger("agent.restore")

BATCH_FILES = 4096  # files written before one commit (two filesystem flushes)
BATCH_BYTES = 512 << 20  # and bytes: a temp file waits at most this much for its name
# Files a worker stages per task: one hand-off to the pool per run of small files, not per
# file (a task per 4 KiB file cost more in futures and thread wake-ups than its write);
# a large file is a task of its own, so the pool still spreads the large ones.
TASK_FILES = 32
TASK_BYTES = 4 << 20
# A plan of small files (at most this many bytes a file on average) is restored by at most
# one thread per CPU: each of its files is ~25 short syscalls, every one a hand-off of the
# GIL, and 8 threads on 2 CPUs spent most of their time handing it over (170 futex calls a
# file, 1 with one thread; docs/benchmarks.md). Larger files keep `workers` threads.
SMALL_FILE_BYTES = 64 << 10


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@runtime_checkable
class StagingTarget(Target, Protocol):
    """A target whose files are written first and made durable per batch (DirectoryTarget)."""

    def stage(self, item: Item, on_bytes: Callable[[int], None]) -> Staged | Status: ...
    def commit(self, staged: Sequence[Staged]) -> list[BackupAgentError | OSError | None]: ...
    def discard(self, staged: Sequence[Staged]) -> None: ...


@dataclass(frozen=True, slots=True)
class ItemResult:
    item: Item
    destination: str
    status: Status
    bytes: int = 0
    error: str | None = None
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not Status.FAILED

    def to_dict(self) -> dict[str, Any]:
        record = self.item.record
        placement = self.item.placement
        return {
            "type": "file",
            "status": self.status.value,
            "bucket": record.bucket,
            "key": record.key,
            "version_id": record.version_id,
            "version_token": record.version_token,
            "sha256": record.sha256,
            "size": record.size,
            "destination": self.destination,
            "renamed": bool(placement and placement.renamed),
            "deleted_in_s3": self.item.deleted_in_s3,
            "bytes": self.bytes,
            "error": self.error,
            "note": self.note,
        }


class Progress(Protocol):
    def start(self, files: int, total_bytes: int) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def finished(self, result: ItemResult) -> None: ...
    def close(self) -> None: ...


class NoProgress:
    def start(self, files: int, total_bytes: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def finished(self, result: ItemResult) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class Summary:
    results: list[ItemResult]
    plan: Plan

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if not r.ok]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.plan.missing and not self.plan.elsewhere

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "ok": self.ok,
            "restored": self.count(Status.RESTORED),
            "unchanged": self.count(Status.UNCHANGED),
            "planned": self.count(Status.PLANNED),
            "taken": self.count(Status.TAKEN),  # restore --fleet: another member's
            "failed": len(self.failed),
            "bytes": self.bytes,
            "renamed": len(self.plan.renamed),
            "skipped": [{"key": c.key, "reason": c.reason} for c in self.plan.skipped],
            "missing": [{"key": c.key, "reason": c.reason} for c in self.plan.missing],
            "held_elsewhere": [
                {
                    "key": i.key,
                    "version_id": i.record.version_id,
                    "version_token": i.record.version_token,
                    "volume_id": i.record.volume_id,
                }
                for i in self.plan.elsewhere
            ],
        }


class Restorer:
    """Runs a plan against a target with a pool of threads; one item's failure is its own."""

    def __init__(
        self,
        target: Target,
        *,
        workers: int = 8,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
        batch_files: int = BATCH_FILES,
        batch_bytes: int = BATCH_BYTES,
        task_files: int = TASK_FILES,
        task_bytes: int = TASK_BYTES,
        cpus: int | None = None,
        processes: bool = True,
    ) -> None:
        self.target = target
        self.workers = workers
        self.batch_files = max(1, batch_files)
        self.batch_bytes = batch_bytes
        self.task_files = max(1, task_files)
        self.task_bytes = task_bytes
        self.cpus = cpus or usable_cpus()
        self.processes = processes  # False: small files are staged by threads, never forked
        self.progress = progress or NoProgress()
        self.stop = stop or threading.Event()  # set: items not yet started are skipped

    def run(self, plan: Plan, *, dry_run: bool = False) -> Summary:
        processes = 0 if dry_run else self.processes_for(plan.items)
        if processes and isinstance(self.target, DirectoryTarget):
            # forked before the progress display may start a thread (tqdm's monitor)
            with ProcessStaging(self.target, plan.items, processes, self.stop) as pool:
                # stopped while the directories were made: no child, every item skipped below
                if not self.stop.is_set() and pool.start():
                    return self._run(plan, lambda: self._in_processes(pool, plan.items))
        if dry_run:
            return self._run(plan, lambda: [self._dry(item) for item in plan.items])
        return self._run(plan, lambda: self._in_parallel(plan.items))

    def _run(self, plan: Plan, results: Callable[[], list[ItemResult]]) -> Summary:
        self.progress.start(len(plan.items), plan.total_bytes)
        try:
            return Summary(results(), plan)
        finally:
            self.progress.close()

    def threads_for(self, items: list[Item]) -> int:
        """Threads for a directory restore of `items`: `workers`, or at most one per CPU for
        a plan of small files (SMALL_FILE_BYTES). (S3 uploads wait on the network: all
        `workers`.)"""
        if items and sum(item.size for item in items) <= SMALL_FILE_BYTES * len(items):
            return max(1, min(self.workers, self.cpus))
        return max(1, self.workers)

    def processes_for(self, items: list[Item]) -> int:
        """Worker processes to stage `items` (0: threads do). A directory restore of small
        files (as `threads_for`) on several CPUs, started from a single thread (workers.py)."""
        processes = min(self.workers, self.cpus)
        small = sum(item.size for item in items) <= SMALL_FILE_BYTES * len(items)
        if self.processes and small and usable(self.target, len(items), processes):
            return processes
        return 0

    def _in_parallel(self, items: list[Item]) -> list[ItemResult]:
        """Files in progress always finish or clean up; an exception cancels the rest."""
        staging = isinstance(self.target, StagingTarget)
        threads = self.threads_for(items) if staging else self.workers
        pool = ThreadPoolExecutor(threads, thread_name_prefix="restore")
        try:
            if isinstance(self.target, StagingTarget):
                return self._in_batches(pool, self.target, items)
            futures = [pool.submit(self._one, item) for item in items]
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _in_batches(
        self, pool: ThreadPoolExecutor, target: StagingTarget, items: list[Item]
    ) -> list[ItemResult]:
        results: list[ItemResult] = []
        for batch in self._batches(items):
            tasks = list(_runs(batch, self.task_files, self.task_bytes))
            futures = [pool.submit(self._stage_all, target, task) for task in tasks]
            done: list[ItemResult | tuple[Staged, int]] = []
            try:
                for future in futures:
                    done.extend(future.result())
            finally:
                if len(done) < len(batch):  # an unexpected error: no temp file is left
                    pool.shutdown(wait=True, cancel_futures=True)
                    left = (
                        one
                        for f in futures
                        if f.done() and not f.cancelled() and f.exception() is None
                        for one in f.result()
                    )
                    target.discard([one[0] for one in left if isinstance(one, tuple)])
            results.extend(self._commit(target, done))
        return results

    def _commit(
        self, target: StagingTarget, done: list[ItemResult | tuple[Staged, int]]
    ) -> list[ItemResult]:
        """Commit a batch's staged files; every file's result, in the plan's order."""
        results: list[ItemResult] = []
        staged = [one for one in done if isinstance(one, tuple)]
        try:
            errors = iter(target.commit([one[0] for one in staged]))
        except KeyboardInterrupt:
            # Ctrl-C twice mid-commit: the files not named yet lose their temp names (a named
            # one's is gone already, or its name stays: complete). Only an interrupt: what
            # else escapes a commit is a bug or a crash, and the next restore sweeps up
            # (test_restore_durable.py's crashes leave their temp names, as a dead process)
            target.discard([one[0] for one in staged])
            raise
        for one in done:
            if isinstance(one, tuple):
                result = self._committed(one[0], one[1], next(errors))
            else:
                result = one
            self.progress.finished(result)
            results.append(result)
        return results

    def _in_processes(self, pool: ProcessStaging, items: list[Item]) -> list[ItemResult]:
        """`_in_batches` with the staging done by worker processes (workers.py).

        Runs are handed out a batch ahead of the one the parent waits for (`runs_ahead`),
        so the children stage the next batch while the parent commits this one. A stop
        request skips the runs not yet handed out and cancels those handed out and not yet
        taken by a child (`_cancel_ahead`). A dead child: the parent stages its runs
        itself. Anything else unexpected: the runs under way finish, and every file staged
        and not committed is removed."""
        bounds: list[list[tuple[int, int]]] = []  # per batch, the runs' [start, stop)
        start = 0
        for batch in self._batches(items):
            bounds.append([])
            for run in _runs(batch, self.task_files, self.task_bytes):
                bounds[-1].append((start, start + len(run)))
                start += len(run)
        queued = iter([run for batch_runs in bounds for run in batch_runs])
        target, window = pool.target, self.runs_ahead(pool.processes)
        pending: deque[tuple[int, int, Future[list[Outcome]] | None]] = deque()
        ahead_bytes = 0  # of the runs in `pending`: at most a batch's (`batch_bytes`) ahead
        after: tuple[int, int] | None = next(queued, None)
        results: list[ItemResult] = []
        done: list[ItemResult | tuple[Staged, int]] = []
        broken = False
        try:
            for batch_runs in bounds:
                done = []
                for _ in batch_runs:
                    while after is not None and len(pending) < window:
                        size = sum(item.size for item in items[after[0] : after[1]])
                        if pending and ahead_bytes + size > self.batch_bytes:
                            break  # the runs' temp files wait for their commit on the disk
                        bound, after, ahead_bytes = after, next(queued, None), ahead_bytes + size
                        future = None
                        if not (self.stop.is_set() or broken):
                            try:
                                future = pool.submit(*bound)
                            except BrokenProcessPool:  # a child died since the last answer
                                broken = True
                        pending.append((*bound, future))
                    self._cancel_ahead(pending)
                    first, last, future = pending.popleft()
                    ahead_bytes -= sum(item.size for item in items[first:last])
                    if future is not None and future.cancelled():
                        future = None  # skipped as not started
                    if future is None:
                        done.extend(self._unstarted(target, items[first:last], broken))
                        continue
                    try:
                        outcomes = future.result()
                    except BrokenProcessPool:
                        broken = True
                        log.warning("restore.worker_lost", files=last - first)
                        # the pool fails the futures, then ends the other children: wait
                        # for them to be gone before removing what the lost runs left
                        pool.shutdown()
                        target.discard(pool.leftovers(first, last))
                        done.extend(self._stage_all(target, items[first:last]))
                        continue
                    done.extend(self._received(target, items, first, outcomes))
                finished, done = done, []
                self._cancel_ahead(pending)  # before the commit, which gives the children time
                results.extend(self._commit(target, finished))
        except BaseException:
            pool.shutdown()  # the runs under way finish: their files are known, then removed
            left = [one[0] for one in done if isinstance(one, tuple)]
            for first, _last, future in pending:
                if (
                    future is not None
                    and future.done()
                    and not future.cancelled()
                    and future.exception() is None
                ):
                    received = self._received(target, items, first, future.result(), quiet=True)
                    left.extend(one[0] for one in received if isinstance(one, tuple))
            target.discard(left)
            raise
        return results

    def _cancel_ahead(self, pending: deque[tuple[int, int, Future[list[Outcome]] | None]]) -> None:
        """After a stop request: cancel every run handed out and not taken by a child yet
        (all at once: the children would take them while the parent waits for one)."""
        if self.stop.is_set():
            for _first, _last, future in pending:
                if future is not None:
                    future.cancel()

    def runs_ahead(self, processes: int) -> int:
        """Runs handed to the children ahead of the one the parent waits for: a whole
        batch's (when the parent takes the last run of a batch, the next batch's runs are
        all handed out; `_in_processes` also holds the runs ahead to a batch's bytes, so that
        at most two batches of temp files wait for their names), so that the children stage
        it while the parent commits (with
        `4 * processes` they had at most 256 files to stage during a commit of 4,096, and
        the restore ran staging and commit in turn, one CPU idle: issue 19)."""
        return max(4 * processes, -(-self.batch_files // self.task_files) + 1)

    def _unstarted(
        self, target: DirectoryTarget, items: list[Item], broken: bool
    ) -> list[ItemResult | tuple[Staged, int]]:
        """A run not handed out: skipped after a stop request, staged here after a lost child."""
        if broken and not self.stop.is_set():
            return self._stage_all(target, items)
        return [
            ItemResult(
                item, target.destination(item), Status.FAILED, error="interrupted: not started"
            )
            for item in items
        ]

    def _received(
        self,
        target: DirectoryTarget,
        items: list[Item],
        first: int,
        outcomes: list[Outcome],
        *,
        quiet: bool = False,
    ) -> list[ItemResult | tuple[Staged, int]]:
        """A child's outcomes for the run starting at `first`, as `_stage` gives them."""
        received: list[ItemResult | tuple[Staged, int]] = []
        for item, outcome in zip(items[first : first + len(outcomes)], outcomes, strict=True):
            if not quiet:
                self.progress.advance(outcome.written)
            if isinstance(outcome, Written):
                parts = item.placement.parts if item.placement is not None else ()
                received.append((Staged(item, parts, outcome.temp, outcome.inode), outcome.written))
            elif isinstance(outcome, Decided) and outcome.error is not None:
                destination = target.destination(item)
                received.append(
                    self._failed_with(item, destination, outcome.error, outcome.written, quiet)
                )
            else:
                destination = target.destination(item)
                received.append(
                    ItemResult(item, destination, outcome.status, bytes=outcome.written)
                )
        return received

    def _stage_all(
        self, target: StagingTarget, items: list[Item]
    ) -> list[ItemResult | tuple[Staged, int]]:
        """One task: its files staged in turn; an unexpected error discards the ones staged."""
        done: list[ItemResult | tuple[Staged, int]] = []
        try:
            for item in items:
                done.append(self._stage(target, item))
        except BaseException:
            target.discard([one[0] for one in done if isinstance(one, tuple)])
            raise
        return done

    def _batches(self, items: list[Item]) -> Iterator[list[Item]]:
        return _runs(items, self.batch_files, self.batch_bytes)

    def _stage(self, target: StagingTarget, item: Item) -> ItemResult | tuple[Staged, int]:
        """The item's result if it is already decided, else what commit must name."""
        destination = target.destination(item)
        if self.stop.is_set():
            return ItemResult(item, destination, Status.FAILED, error="interrupted: not started")
        written = 0

        def on_bytes(nbytes: int) -> None:
            nonlocal written
            written += nbytes
            self.progress.advance(nbytes)

        try:
            staged = target.stage(item, on_bytes)
        except (BackupAgentError, OSError) as exc:
            return self._failed(item, destination, exc, written)
        if isinstance(staged, Status):
            return ItemResult(item, destination, staged, bytes=written)
        return staged, written

    def _committed(
        self, staged: Staged, written: int, error: BackupAgentError | OSError | None
    ) -> ItemResult:
        destination = self.target.destination(staged.item)
        if error is None:
            return ItemResult(staged.item, destination, Status.RESTORED, bytes=written)
        return self._failed(staged.item, destination, error, written)

    def _failed(
        self, item: Item, destination: str, exc: BackupAgentError | OSError, written: int
    ) -> ItemResult:
        return self._failed_with(item, destination, error_text(exc, destination), written)

    def _failed_with(
        self, item: Item, destination: str, error: str, written: int, quiet: bool = False
    ) -> ItemResult:
        if not quiet:
            log.error(
                "restore.failed",
                bucket=item.record.bucket,
                key=item.key,
                version=item.record.version_id or item.record.version_token,
                error=error,
            )
        return ItemResult(item, destination, Status.FAILED, bytes=written, error=error)

    def _dry(self, item: Item) -> ItemResult:
        result = ItemResult(
            item, self.target.destination(item), Status.PLANNED, note=self.target.check(item)
        )
        self.progress.finished(result)
        return result

    def _one(self, item: Item) -> ItemResult:
        destination = self.target.destination(item)
        if self.stop.is_set():
            result = ItemResult(item, destination, Status.FAILED, error="interrupted: not started")
            self.progress.finished(result)
            return result
        written = 0

        def on_bytes(nbytes: int) -> None:
            nonlocal written
            written += nbytes
            self.progress.advance(nbytes)

        try:
            status = self.target.restore(item, on_bytes)
            result = ItemResult(item, destination, status, bytes=written)
        except (BackupAgentError, OSError) as exc:
            result = self._failed_with(item, destination, error_text(exc, destination), written)
        self.progress.finished(result)
        return result


def _runs(items: list[Item], files: int, size: int) -> Iterator[list[Item]]:
    """`items` in order, cut into runs of at most `files` files and `size` bytes (a file
    larger than `size` is a run of its own)."""
    run: list[Item] = []
    total = 0
    for item in items:
        if run and (len(run) >= files or total + item.size > size):
            yield run
            run, total = [], 0
        run.append(item)
        total += item.size
    if run:
        yield run
