"""The commit stage: one thread that records the copies the workers made durable.

A worker's serial path ends when its copy is durable on the volume (renamed into place and
fsynced). It hands the version's record to the committer (`Committer.submit`) and takes its
next message. The committer takes every record waiting, appends their journal lines with ONE
fsync (`Journal.append_many`), records them in the ledger with ONE call
(`Ledger.write_many`: TransactWriteItems), then resolves each `Pending`: only then does
the consumer delete its message, log ``backup.stored`` and count it. While one commit is
under way the next records accumulate (group commit).

Lingering (issue 19: at 1-2 workers a batch was mostly one record, i.e. one transaction and
one delete per object). The consumer says how many records may come soon (`expect`: its
workers that are handling a message or about to take one already received) and how many
messages it has received that wait for a worker (`follow`). While records are coming, the
committer waits for them before committing a small batch, but never once the batch holds
`batch_limit` records, and never longer after the oldest record of the batch was submitted
than `linger_ahead` while at least one message per worker waits for one (a backlog:
throughput counts, and the workers, which do not wait for the committer, are not slowed) or
`linger` otherwise (a record's latency counts). A lone record with nothing under way is
committed at once, and without a consumer's word (jobs, tests) nothing waits. The wait only
groups records: what is durable, and when a message is deleted relative to its record, does
not change.

Each record carries what its worker held until the record is written (`Pending.held`): the
snapshot barrier, taken shared before the rename, and the version's lock. The committer
releases them after the ledger write, so the barrier still covers rename → journal line →
DynamoDB record for every copy, and a second delivery of the version waits for the record.

Directories (issue 19): a worker's copy is fsynced before its rename, but the rename's
directory is fsynced here, once per batch for every directory changed since the last commit
(`directories`: Volume.sync_directories), before the journal append; its failure fails the
batch like the append's. The crash analysis: docs/reliability.md.

A failure is per record: a journal append that fails fails every record of its batch (none
reached the ledger), a ledger write that fails fails its record alone; each `Pending` is
resolved with the exception, which the consumer handles as it handles a failed `process()`.

Lifecycle: the thread starts at the first `submit`; `close(timeout)` commits what was
submitted until the deadline and ends it (the consumer's `stop` has already made visible
again the messages whose records it did not see committed).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import structlog

from agent.records import VersionRecord
from agent.storage.journal import Journal, JournalPosition
from agent.storage.ledger import Written

log = structlog.get_logger("agent.commit")

T = TypeVar("T")
# one record's ledger write: what it found (agent/storage/ledger.py's `Written`), or its failure
Outcome = Written | Exception

# How long the oldest record of a small batch may wait for records under way (the wait ends
# sooner when nothing more is coming or the batch is full; docs/benchmarks.md, "Small
# objects: lingering"): a few milliseconds when no message waits for a worker, where each
# record's latency counts; with a backlog, about three copies of a 4 KiB object at one
# worker on a loaded machine (~50 ms each), so that a batch holds about four records.
DEFAULT_LINGER = 0.005
DEFAULT_LINGER_AHEAD = 0.15
# Records per batch that end the wait: one DeleteMessageBatch's worth of messages (SQS's 10),
# so the deletes of one commit go out together (agent/pipeline/deletes.py).
DEFAULT_BATCH_LIMIT = 10


def linger_for(
    *,
    age: float,
    size: int,
    coming: int,
    ahead: int,
    linger: float,
    linger_ahead: float,
    batch_limit: int,
) -> float:
    """Seconds a batch of `size` records, the oldest submitted `age` seconds ago, waits for
    more before it is committed (0: commit now). It waits only while records are coming
    (`coming` > 0) and the batch is not full, and the oldest waits at most `linger_ahead`
    while messages wait for a worker (`ahead` > 0), `linger` when none do."""
    if size <= 0 or coming <= 0 or size >= batch_limit:
        return 0.0
    return max(0.0, (linger_ahead if ahead > 0 else linger) - age)


class Recorder(Protocol):
    """What the committer needs of the ledger (agent/storage/ledger.py's `Ledger`): one
    outcome per record, in order: what its write found (`Written`: FRESH newly recorded;
    HELD already recorded, the item naming the record's volume and copy; KNOWN already
    recorded otherwise) or the exception that record's write raised; and a version's item
    as it is now (`get_version`, after retention expired one meanwhile)."""

    def write_many(self, records: Sequence[VersionRecord]) -> list[Outcome]: ...

    def get_version(self, bucket: str, key: str, version_token: str) -> VersionRecord | None: ...


class Pending(Generic[T]):
    """A record handed to the committer; resolved once, with what `finish` makes of its
    ledger outcome, or with the exception that stopped it."""

    def __init__(
        self,
        record: VersionRecord,
        finish: Callable[[bool], T],
        held: contextlib.ExitStack | None = None,
    ) -> None:
        self.record = record
        self.finish = finish
        self.held = held or contextlib.ExitStack()
        self.submitted_at = 0.0  # the committer's clock, set by `submit`
        self._done = threading.Event()
        self._guard = threading.Lock()
        self._outcome: T | Exception | None = None
        self._callbacks: list[Callable[[T | Exception], None]] = []

    def on_done(self, callback: Callable[[T | Exception], None]) -> None:
        """Call `callback` with the result or the exception once resolved (at once if it is;
        otherwise in the committer's thread)."""
        with self._guard:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
            outcome = self._outcome
        callback(outcome)  # type: ignore[arg-type]  # set before _done

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> T:
        """The result; raises what failed it, or TimeoutError."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"record of {self.record.key!r} not committed in time")
        if isinstance(self._outcome, Exception):
            raise self._outcome
        return self._outcome  # type: ignore[return-value]  # resolved with a T

    def resolve(self, outcome: T | Exception) -> None:
        with self._guard:
            if self._done.is_set():
                return
            self._outcome = outcome
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(outcome)
            except Exception:
                log.exception("commit.callback_failed", key=self.record.key)


class Committer:
    """One thread: journal lines of every waiting record under one fsync, then their ledger
    records in one call, then each record resolved."""

    def __init__(
        self,
        journal: Journal,
        ledger: Recorder,
        *,
        linger: float = DEFAULT_LINGER,
        linger_ahead: float = DEFAULT_LINGER_AHEAD,
        batch_limit: int = DEFAULT_BATCH_LIMIT,
        clock: Callable[[], float] = time.monotonic,
        directories: Callable[[], object] | None = None,
    ) -> None:
        self.journal = journal
        # fsyncs the directories of the copies renamed without one (Volume.sync_directories)
        self.directories = directories
        self.ledger = ledger
        self.linger = linger
        self.linger_ahead = linger_ahead
        self.batch_limit = batch_limit
        self.clock = clock
        self._cond = threading.Condition()
        self._waiting: list[Pending[object]] = []
        self._committing = 0
        self._coming = 0  # records the consumer says may come soon (`expect`)
        self._ahead: Callable[[], int] = lambda: 0  # messages waiting for a worker (`follow`)
        self._workers: Callable[[], int] = lambda: 1  # a backlog: a waiting message each
        self._closed = False
        self._thread: threading.Thread | None = None
        self.commits = 0  # batches committed (each one journal fsync)
        self.committed = 0  # records in them

    def submit(self, pending: Pending[T]) -> Pending[T]:
        with self._cond:
            if self._closed:
                raise RuntimeError("the committer is closed")
            pending.submitted_at = self.clock()
            self._waiting.append(pending)  # type: ignore[arg-type]  # resolved, never read as T
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="committer", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return pending

    def expect(self, change: int) -> None:
        """The consumer's word on what may come soon: +1 when a worker starts handling a
        message (or keeps going with one already received), -1 when it stops; a batch waits
        for more records only while the sum is above 0 (see the module's docstring)."""
        with self._cond:
            self._coming = max(0, self._coming + change)
            self._cond.notify_all()

    def follow(
        self, received_ahead: Callable[[], int], workers: Callable[[], int] = lambda: 1
    ) -> None:
        """The consumer's count of messages received and waiting for a worker, and its
        number of workers: while at least as many messages wait as there are workers (a
        backlog: every worker has another object to copy after this one), a small batch may
        wait `linger_ahead` instead of `linger`. Fewer waiting is a passing burst, each
        taken by a worker at once, where a record's latency counts. Both are read at each
        wait (the number of workers is live)."""
        with self._cond:
            self._ahead = received_ahead
            self._workers = workers

    def backlog(self) -> int:
        """Records submitted and not yet resolved."""
        with self._cond:
            return len(self._waiting) + self._committing

    def close(self, timeout: float) -> None:
        """Commit what was submitted until `timeout`, then end the thread. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            log.info("commit.stopped", commits=self.commits, records=self.committed)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._waiting) or self._closed)
                self._linger()
                batch, self._waiting = self._waiting, []
                if not batch:
                    return  # closed, nothing left
                self._committing = len(batch)
            try:
                self._commit(batch)
            except Exception as exc:  # never leave a record unresolved
                log.exception("commit.crashed")
                for pending in batch:
                    self._release(pending)
                    pending.resolve(exc)
            finally:
                with self._cond:
                    self._committing = 0

    def _linger(self) -> None:
        """With the lock held and records waiting: wait for the records under way while
        `linger_for` says so (woken by each submit and each `expect`)."""
        while not self._closed:
            wait = linger_for(
                age=self.clock() - self._waiting[0].submitted_at,
                size=len(self._waiting),
                coming=self._coming,
                ahead=self._backlog(),
                linger=self.linger,
                linger_ahead=self.linger_ahead,
                batch_limit=self.batch_limit,
            )
            if wait <= 0:
                return
            self._cond.wait(wait)

    def _backlog(self) -> int:
        """Messages waiting for a worker, when they make a backlog (`follow`), else 0."""
        if not self._coming:
            return 0
        ahead = self._ahead()
        return ahead if ahead >= max(1, self._workers()) else 0

    def _commit(self, batch: list[Pending[object]]) -> None:
        try:
            if self.directories is not None:
                # every copy's directory entry durable before a journal line names it
                self.directories()
            positions = self.journal.append_many([p.record for p in batch])
        except Exception as exc:  # noqa: BLE001 - every record of the batch failed alike
            log.warning("commit.journal_failed", records=len(batch), error=str(exc))
            for pending in batch:
                self._release(pending)
                pending.resolve(exc)
            return
        self.commits += 1
        self.committed += len(batch)
        results: list[tuple[Pending[object], Outcome]] = []
        for round_ in _rounds(batch):
            outcomes = self.ledger.write_many([p.record for p in round_])
            if len(outcomes) != len(round_):
                error = RuntimeError(f"write_many answered {len(outcomes)} for {len(round_)}")
                outcomes = [error] * len(round_)
            results.extend(zip(round_, outcomes, strict=True))
        if positions:
            results = self._expired_meanwhile(positions[-1], results)
        for pending, outcome in results:
            self._settle(pending, outcome)

    def _expired_meanwhile(
        self, end: JournalPosition, results: list[tuple[Pending[object], Outcome]]
    ) -> list[tuple[Pending[object], Outcome]]:
        """`journal_again_if_expired` for every record of the batch, whatever its ledger
        outcome; when the append it needs fails, each record not failed already fails (the
        journal itself failing)."""
        try:
            journal_again_if_expired(
                self.journal, self.ledger, end, [(p.record, o) for p, o in results]
            )
        except Exception as exc:  # noqa: BLE001 - the journal append failed: those records
            log.warning("commit.journal_again_failed", records=len(results), error=str(exc))
            return [(p, o if isinstance(o, Exception) else exc) for p, o in results]
        return results

    def _settle(self, pending: Pending[object], outcome: Outcome) -> None:
        if isinstance(outcome, Exception):
            self._release(pending)
            pending.resolve(outcome)
            return
        try:
            result = pending.finish(outcome is Written.FRESH)
        except Exception as exc:  # noqa: BLE001 - that record's failure
            result = exc
        finally:
            self._release(pending)
        pending.resolve(result)

    @staticmethod
    def _release(pending: Pending[object]) -> None:
        try:
            pending.held.close()
        except Exception:
            log.exception("commit.release_failed", key=pending.record.key)


def _rounds(batch: list[Pending[object]]) -> list[list[Pending[object]]]:
    """The batch in rounds with at most one record per object key, in submission order: a
    key's versions are recorded one after the other (and one transaction may not write one
    item, the key's LATEST, twice)."""
    rounds: list[list[Pending[object]]] = []
    keys: list[set[tuple[str, str]]] = []
    for pending in batch:
        key = (pending.record.bucket, pending.record.key)
        # the round after the last one holding this key: never before an earlier version
        holding = [i for i, seen in enumerate(keys) if key in seen]
        index = holding[-1] + 1 if holding else 0
        if index == len(rounds):
            rounds.append([])
            keys.append(set())
        rounds[index].append(pending)
        keys[index].add(key)
    return rounds


def journal_again_if_expired(
    journal: Journal,
    ledger: Recorder,
    end: JournalPosition,
    written: Sequence[tuple[VersionRecord, Outcome]],
) -> None:
    """Retention may expire a version between its journal line and its ledger write (a
    second delivery of an old version: retention's note after the line, the item deleted
    before the write, which recreates it). The journal then forgets a version the ledger
    lists, and gc frees the copy the item names (a review, 2026-12-02). Each record of
    `written` (journalled up to `end`, with its ledger write's outcome) that an ``expired``
    note after `end` names is journalled again if its item is there and names the record's
    volume: journal and ledger agree, and retention expires it anew on its next run. Its
    item gone (retention's delete came after the write), it is not: both have forgotten it,
    unless that delete lands after the look, when the journal keeps the version a while
    (its copy kept until retention's next run, never lost). An item naming only other
    volumes is never journalled again here (this volume's journal would keep a copy no
    record of it names).

    Every outcome is looked at, not only a fresh write's: the write's answer may have been
    lost (a read timeout, a 500) after its first request made the item, and botocore's
    retry, refused by that item, answers "already recorded" (`Written.HELD`) or fails;
    the redelivery of a failed record then finds the item and the copy and journals
    nothing (the lost-answer review, 2026-12-02). The look costs the same: one lstat when
    nothing was appended since `end` (`Journal.expired_after`), one GetItem per version
    expired meanwhile.

    If the journal or the ledger cannot be asked, each record whose write's answer named
    its volume (`Written.FRESH` or `Written.HELD`; of those the journal said expired,
    when it could say) is journalled again unasked: an extra line only keeps a copy
    longer, and a retry would not do it (a redelivery finds the item and the copy, and
    journals nothing). So is a failed write's record: its first attempt may have made the
    item before its answer was lost and the retry failed. Raises only when that append
    fails."""
    by_identity = {(r.bucket, r.key, r.version_token): r for r, _ in written}
    # journalled again unasked: the writes whose answer named the record's volume, and the
    # failed ones (the first attempt may have made the item: a lost answer whose retry
    # failed; the session's review, 2026-12-02)
    named = {
        (r.bucket, r.key, r.version_token)
        for r, outcome in written
        if outcome is Written.FRESH or outcome is Written.HELD or isinstance(outcome, Exception)
    }
    expired: set[tuple[str, str, str]] | None = None
    try:
        expired = journal.expired_after(end, by_identity.keys())
        again = []
        for identity in sorted(expired):
            record = by_identity[identity]
            found = ledger.get_version(*identity)
            held = found is not None and (
                not record.volume_id or record.volume_id in found.holder_volumes()
            )
            if held:
                again.append(record)
            log.warning(
                "commit.expired_meanwhile",
                bucket=record.bucket,
                key=record.key,
                version=record.version_token,
                journalled_again=held,
            )
    except Exception as exc:  # noqa: BLE001 - unasked, the records named (above)
        unasked = named if expired is None else named & expired
        log.warning("commit.expired_check_failed", records=len(unasked), error=str(exc))
        again = [by_identity[identity] for identity in sorted(unasked)]
    if again:
        journal.append_many(again)
