"""The commit stage (agent/pipeline/commit.py, issue 19): the records of copies finished
while a commit is under way are committed together, one journal fsync and one ledger call
for them all; each record's failure is its own; what a worker held is released only after
its ledger write.

Grouping is made certain with conditions (the first ledger call is held until the others
have been submitted), never with sleeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import RetryableError
from agent.pipeline.commit import Committer, Pending, _rounds, linger_for
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import Written

RECORD = VersionRecord(
    bucket="b", key="k", version_token="v:1", order_key="s1", event_name="ObjectCreated:Put",
    event_time="2026-11-01T09:00:00+00:00", backup_time="2026-11-01T09:00:01+00:00",
    volume_id="vol-test", sha256="a" * 64, size=1,
)  # fmt: skip
WAIT = 30  # seconds: a safety net for a broken build; conditions decide


def _record(n: int, key: str | None = None) -> VersionRecord:
    return dataclasses.replace(RECORD, key=key or f"k{n}", version_token=f"v:{n}")


class Ledger:
    """A ledger's `write_many`; `fail` names keys whose write fails; its first call can be
    held."""

    def __init__(
        self,
        hold_first: bool = False,
        fail: dict[str, Exception] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.written: list[str] = []
        self.calls: list[list[str]] = []
        self.clock = clock
        self.called_at: list[float] = []  # the clock at each call, with a clock
        self.fail = fail or {}
        self.events: list[str] = []  # what happened, in order (with the held stacks)
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()

    def write_many(self, records: Sequence[VersionRecord]) -> list[Written | Exception]:
        self.calls.append([r.key for r in records])
        if self.clock is not None:
            self.called_at.append(self.clock())
        self.entered.set()
        assert self.release.wait(WAIT)
        outcomes: list[Written | Exception] = []
        for record in records:
            if record.key in self.fail:
                outcomes.append(self.fail[record.key])
                continue
            self.written.append(record.key)
            self.events.append(f"recorded {record.key}")
            outcomes.append(Written.KNOWN if record.key == "known" else Written.FRESH)
        return outcomes


def _journal(tmp_path: Path) -> tuple[Journal, list[int]]:
    fsyncs: list[int] = []
    return Journal(tmp_path, fsync=lambda fd: (fsyncs.append(fd), os.fsync(fd))[0]), fsyncs


@pytest.fixture
def committers() -> Iterator[list[Committer]]:
    made: list[Committer] = []
    yield made
    for committer in made:
        committer.close(WAIT)


def _pending(record: VersionRecord, events: list[str] | None = None) -> Pending[str]:
    held = contextlib.ExitStack()
    if events is not None:
        held.callback(lambda: events.append(f"released {record.key}"))
    return Pending(record, lambda fresh: f"{record.key}:{'fresh' if fresh else 'known'}", held)


def test_records_finished_during_a_commit_are_committed_together(tmp_path, committers):
    journal, fsyncs = _journal(tmp_path)
    ledger = Ledger(hold_first=True)
    committer = Committer(journal, ledger)
    committers.append(committer)

    first = committer.submit(_pending(_record(0)))
    assert ledger.entered.wait(WAIT)  # the first record's commit is under way
    others = [committer.submit(_pending(_record(n))) for n in range(1, 6)]
    assert not any(p.done() for p in [first, *others])  # none resolved before its record
    ledger.release.set()

    assert [p.wait(WAIT) for p in [first, *others]] == [f"k{n}:fresh" for n in range(6)]
    assert ledger.calls == [["k0"], ["k1", "k2", "k3", "k4", "k5"]]  # one call per batch
    assert len(fsyncs) == 2  # one journal fsync per batch
    assert [r.key for r in journal.read_all()] == [f"k{n}" for n in range(6)]
    assert (committer.commits, committer.committed) == (2, 6)


def test_a_failed_ledger_write_fails_its_record_alone(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    throttled = RetryableError("ProvisionedThroughputExceededException")
    ledger = Ledger(hold_first=True, fail={"k2": throttled})
    committer = Committer(journal, ledger)
    committers.append(committer)

    blocker = committer.submit(_pending(_record(0)))
    assert ledger.entered.wait(WAIT)
    batch = [committer.submit(_pending(_record(n))) for n in range(1, 4)]
    ledger.release.set()

    assert blocker.wait(WAIT) == "k0:fresh"
    assert batch[0].wait(WAIT) == "k1:fresh"
    with pytest.raises(RetryableError):
        batch[1].wait(WAIT)
    assert batch[2].wait(WAIT) == "k3:fresh"
    assert ledger.written == ["k0", "k1", "k3"]


def test_a_failed_journal_append_fails_the_batch_and_writes_no_record(tmp_path, committers):
    journal = Journal(tmp_path, fsync=lambda fd: (_ for _ in ()).throw(OSError(28, "No space")))
    ledger = Ledger()
    committer = Committer(journal, ledger)
    committers.append(committer)

    pending = committer.submit(_pending(_record(1)))

    with pytest.raises(OSError, match="No space"):
        pending.wait(WAIT)
    assert ledger.calls == []  # never a ledger record without its journal line


def test_what_a_worker_held_is_released_after_its_record_is_written(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    ledger = Ledger()
    committer = Committer(journal, ledger)
    committers.append(committer)

    pending = committer.submit(_pending(_record(1), ledger.events))
    pending.wait(WAIT)

    assert ledger.events == ["recorded k1", "released k1"]  # the barrier covered the record


def test_a_failed_record_releases_what_it_held_too(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    events: list[str] = []
    committer = Committer(journal, Ledger(fail={"k1": RetryableError("no")}))
    committers.append(committer)

    with pytest.raises(RetryableError):
        committer.submit(_pending(_record(1), events)).wait(WAIT)
    assert events == ["released k1"]  # a failed record never keeps a snapshot waiting


def test_callbacks_see_the_outcome_in_order_and_late_ones_at_once(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    committer = Committer(journal, Ledger())
    committers.append(committer)
    seen: list[object] = []

    pending = _pending(_record(1, key="known"))
    pending.on_done(seen.append)
    committer.submit(pending).wait(WAIT)
    pending.on_done(seen.append)  # after resolution: called at once

    assert seen == ["known:known", "known:known"]  # the conditional write lost: not fresh


def test_two_versions_of_one_key_are_recorded_one_after_the_other(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    ledger = Ledger(hold_first=True)
    committer = Committer(journal, ledger)
    committers.append(committer)

    blocker = committer.submit(_pending(_record(0)))
    assert ledger.entered.wait(WAIT)
    batch = [
        committer.submit(_pending(_record(n, key=key)))
        for n, key in enumerate(["a", "b", "a", "c", "a"], start=1)
    ]
    ledger.release.set()
    for pending in [blocker, *batch]:
        pending.wait(WAIT)

    assert ledger.calls == [["k0"], ["a", "b", "c"], ["a"], ["a"]]
    assert ledger.written == ["k0", "a", "b", "c", "a", "a"]


@given(st.lists(st.sampled_from("abcd"), max_size=30))
def test_rounds_keep_each_keys_order_and_never_hold_a_key_twice(keys):
    batch = [_pending(_record(n, key=key)) for n, key in enumerate(keys)]

    rounds = _rounds(batch)  # type: ignore[arg-type]

    flat = [p for round_ in rounds for p in round_]
    assert sorted(id(p) for p in flat) == sorted(id(p) for p in batch)  # each record once
    for round_ in rounds:
        assert len({p.record.key for p in round_}) == len(round_)
    for key in set(keys):  # a key's versions: in submission order, one round after another
        tokens = [p.record.version_token for p in flat if p.record.key == key]
        assert tokens == [p.record.version_token for p in batch if p.record.key == key]
    assert len(rounds) == max((keys.count(k) for k in set(keys)), default=0)


def test_close_commits_what_was_submitted_then_refuses_more(tmp_path):
    journal, _ = _journal(tmp_path)
    ledger = Ledger(hold_first=True)
    committer = Committer(journal, ledger)
    first = committer.submit(_pending(_record(0)))
    assert ledger.entered.wait(WAIT)
    second = committer.submit(_pending(_record(1)))
    closing = threading.Thread(target=committer.close, args=(WAIT,))
    closing.start()
    ledger.release.set()
    closing.join(WAIT)

    assert (first.wait(0), second.wait(0)) == ("k0:fresh", "k1:fresh")
    assert committer.backlog() == 0
    with pytest.raises(RuntimeError, match="closed"):
        committer.submit(_pending(_record(2)))


# -- lingering: a small batch waits for the records under way (issue 19) -----------------


class Clock:
    """A monotonic clock the test moves (the committer's waits are bounded by it)."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lone_record_with_nothing_under_way_is_committed_at_once(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    ledger = Ledger()
    committer = Committer(journal, ledger, linger=3600, clock=Clock())  # time never passes
    committers.append(committer)

    assert committer.submit(_pending(_record(1))).wait(WAIT) == "k1:fresh"
    assert ledger.calls == [["k1"]]


def test_a_small_batch_waits_for_the_records_under_way(tmp_path, committers):
    journal, fsyncs = _journal(tmp_path)
    ledger = Ledger()
    committer = Committer(journal, ledger, linger=3600, clock=Clock())
    committers.append(committer)

    committer.expect(+2)  # two workers are copying
    first = committer.submit(_pending(_record(1)))
    second = committer.submit(_pending(_record(2)))
    third = committer.submit(_pending(_record(3)))
    committer.expect(-2)  # nothing more is coming: commit now

    assert [p.wait(WAIT) for p in (first, second, third)] == ["k1:fresh", "k2:fresh", "k3:fresh"]
    assert ledger.calls == [["k1", "k2", "k3"]]  # one transaction, not three
    assert len(fsyncs) == 1


def test_a_full_batch_does_not_wait(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    ledger = Ledger()
    committer = Committer(journal, ledger, linger=3600, batch_limit=3, clock=Clock())
    committers.append(committer)

    committer.expect(+1)  # a worker stays busy for ever
    batch = [committer.submit(_pending(_record(n))) for n in range(3)]

    assert [p.wait(WAIT) for p in batch] == ["k0:fresh", "k1:fresh", "k2:fresh"]
    assert ledger.calls == [["k0", "k1", "k2"]]


def test_a_record_waits_no_longer_than_the_linger(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    clock = Clock()
    ledger = Ledger(clock=clock)
    committer = Committer(journal, ledger, linger=5.0, clock=clock)
    committers.append(committer)

    committer.expect(+1)  # a worker stays busy and never hands anything over
    pending = committer.submit(_pending(_record(1)))
    clock.now += 5.0  # the oldest record has waited its linger
    committer.expect(0)  # wakes the committer (as any submit or expect does)

    assert pending.wait(WAIT) == "k1:fresh"  # committed while a worker is still busy
    assert ledger.called_at == [105.0]  # and not before its linger


def test_the_linger_is_counted_on_the_clock(tmp_path, committers):
    """The same, on the real clock: the record is committed although the worker never
    stops, and not before its linger (a bound, not a sleep: the test waits on the record)."""
    journal, _ = _journal(tmp_path)
    ledger = Ledger()
    committer = Committer(journal, ledger, linger=0.05)
    committers.append(committer)
    committer.expect(+1)

    started = time.monotonic()
    pending = committer.submit(_pending(_record(1)))
    assert pending.wait(WAIT) == "k1:fresh"
    assert time.monotonic() - started >= 0.05


def test_close_commits_a_lingering_batch(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    ledger = Ledger()
    committer = Committer(journal, ledger, linger=3600, clock=Clock())
    committer.expect(+1)
    pending = committer.submit(_pending(_record(1)))

    committer.close(WAIT)

    assert pending.wait(0) == "k1:fresh"


def test_with_messages_waiting_for_a_worker_a_batch_waits_the_longer_linger(tmp_path, committers):
    journal, _ = _journal(tmp_path)
    clock = Clock()
    ledger = Ledger(clock=clock)
    committer = Committer(journal, ledger, linger=0, linger_ahead=5.0, clock=clock)
    committers.append(committer)
    committer.follow(lambda: 3)  # three messages received, waiting for a worker
    committer.expect(+1)

    pending = committer.submit(_pending(_record(1)))
    clock.now += 5.0
    committer.expect(0)  # wakes the committer

    assert pending.wait(WAIT) == "k1:fresh"
    assert ledger.called_at == [105.0]  # not at 100: `linger` (0) did not apply


def test_fewer_messages_waiting_than_workers_is_no_backlog(tmp_path, committers):
    """A passing burst (fewer messages waiting than there are workers to take them) keeps
    the short linger: a record's latency counts there (bench section 5's p99). The number of
    workers is read at each wait (it is live)."""
    journal, _ = _journal(tmp_path)
    clock = Clock()
    ledger = Ledger(clock=clock)
    committer = Committer(journal, ledger, linger=1.0, linger_ahead=5.0, clock=clock)
    committers.append(committer)
    workers = [4]
    committer.follow(lambda: 3, workers=lambda: workers[0])  # 3 waiting, 4 workers
    committer.expect(+1)

    first = committer.submit(_pending(_record(1)))
    clock.now += 1.0
    committer.expect(0)  # wakes the committer: the short linger is over
    assert first.wait(WAIT) == "k1:fresh"
    assert ledger.called_at == [101.0]

    workers[0] = 3  # now 3 waiting for 3 workers: a backlog
    second = committer.submit(_pending(_record(2)))
    clock.now += 1.0
    committer.expect(0)
    with pytest.raises(TimeoutError):  # still lingering: the longer linger applies
        second.wait(0.2)
    clock.now += 4.0
    committer.expect(0)
    assert second.wait(WAIT) == "k2:fresh"
    assert ledger.called_at == [101.0, 106.0]


@given(
    age=st.floats(0, 10),
    size=st.integers(0, 20),
    coming=st.integers(0, 8),
    ahead=st.integers(0, 3),
    linger=st.floats(0, 5),
    linger_ahead=st.floats(0, 5),
    limit=st.integers(1, 12),
)
def test_the_wait_is_bounded_by_the_linger_and_only_while_records_are_coming(
    age, size, coming, ahead, linger, linger_ahead, limit
):
    wait = linger_for(
        age=age, size=size, coming=coming, ahead=ahead, linger=linger,
        linger_ahead=linger_ahead, batch_limit=limit,
    )  # fmt: skip
    bound = linger_ahead if ahead else linger
    assert 0 <= wait <= max(0.0, bound - age)  # never past the oldest record's linger
    if coming == 0 or size >= limit or size == 0:
        assert wait == 0  # nothing coming, or full: commit now
    elif age < bound:
        assert wait > 0


# -- the rename's directory fsync, moved to the committer (issue 19) ------------------------


class RecordingJournal(Journal):
    """A journal that notes its appends in a shared list of events."""

    def __init__(self, root: Path, events: list[str]) -> None:
        super().__init__(root)
        self.events = events

    def append_many(self, records: Sequence[VersionRecord]) -> None:
        self.events.append("journal " + ",".join(r.key for r in records))
        super().append_many(records)


def test_the_committer_syncs_the_directories_before_it_appends_the_journal(tmp_path, committers):
    events: list[str] = []
    ledger = Ledger()
    ledger.events = events
    committer = Committer(
        RecordingJournal(tmp_path, events),
        ledger,
        directories=lambda: events.append("directories"),
    )
    committers.append(committer)

    assert committer.submit(_pending(_record(1))).wait(WAIT) == "k1:fresh"
    assert events == ["directories", "journal k1", "recorded k1"]


def test_a_failed_directory_sync_fails_the_batch_and_journals_nothing(tmp_path, committers):
    events: list[str] = []
    ledger = Ledger()
    journal = RecordingJournal(tmp_path, events)

    def failing() -> None:
        raise OSError(5, "Input/output error")

    committer = Committer(journal, ledger, directories=failing)
    committers.append(committer)
    released: list[str] = []
    batch = [committer.submit(_pending(_record(n), released)) for n in range(3)]

    for pending in batch:
        with pytest.raises(OSError, match="Input/output error"):
            pending.wait(WAIT)  # the consumer deletes no message of a failed record
    assert events == [] and list(journal.read_all()) == [] and ledger.calls == []
    assert sorted(released) == ["released k0", "released k1", "released k2"]


class ExpiringLedger(Ledger):
    """Retention runs inside the ledger write: its ``expired`` note lands after the batch's
    journal lines, and its item delete before the write (`deleted_first`, the write then
    recreates it) or after it (the item is gone)."""

    def __init__(self, journal: Journal, expire: str, *, deleted_first: bool) -> None:
        super().__init__()
        self.journal, self.expire, self.deleted_first = journal, expire, deleted_first
        self.items: dict[str, VersionRecord] = {}
        self.fail_get: Exception | None = None

    def write_many(self, records: Sequence[VersionRecord]) -> list[Written | Exception]:
        for record in records:
            if record.key == self.expire:
                self.journal.append_note("expired", record.to_dict())
            if record.key != self.expire or self.deleted_first:
                self.items[record.key] = record
        return super().write_many(records)

    def get_version(self, bucket: str, key: str, version_token: str) -> VersionRecord | None:
        if self.fail_get is not None:
            raise self.fail_get
        return self.items.get(key)


@pytest.mark.parametrize("deleted_first", [True, False], ids=["item-recreated", "item-gone"])
def test_a_version_expired_between_its_line_and_its_write_ends_journalled_as_the_ledger_holds_it(
    tmp_path, committers, deleted_first
):
    """Retention expiring a version between the commit's journal line and its ledger write
    (note after the line, item deleted before the write) left an item the journal had
    forgotten: gc then freed its copy (a review, 2026-12-02). The journal must end up
    agreeing with the ledger: live again where the item is, forgotten where it is not."""
    journal, _ = _journal(tmp_path)
    ledger = ExpiringLedger(journal, "k1", deleted_first=deleted_first)
    committer = Committer(journal, ledger)
    committers.append(committer)

    pending = [committer.submit(_pending(_record(n))) for n in range(3)]

    assert [p.wait(WAIT) for p in pending] == ["k0:fresh", "k1:fresh", "k2:fresh"]
    live = sorted(r.key for r in journal.read_all())
    assert live == (["k0", "k1", "k2"] if deleted_first else ["k0", "k2"])


def test_a_record_whose_expiry_cannot_be_checked_is_journalled_again_unasked(tmp_path, committers):
    """Failing the record would not repair it: its redelivery finds the item and the copy,
    and journals nothing (the session's review, 2026-12-02). An extra line only keeps a
    copy longer."""
    journal, _ = _journal(tmp_path)
    ledger = ExpiringLedger(journal, "k1", deleted_first=True)
    ledger.fail_get = RetryableError("ThrottlingException")
    committer = Committer(journal, ledger)
    committers.append(committer)

    pending = committer.submit(_pending(_record(1)))

    assert pending.wait(WAIT) == "k1:fresh"
    assert [r.key for r in journal.read_all()] == ["k1"]  # its line after the note


class AnsweringLedger(ExpiringLedger):
    """An `ExpiringLedger` whose write of the expired key answers `answer` (its item made
    all the same, as by a first request whose answer was lost), the item naming `holder`."""

    def __init__(self, journal: Journal, answer: Written | Exception, holder: str) -> None:
        super().__init__(journal, "k1", deleted_first=True)
        self.answer, self.holder = answer, holder

    def write_many(self, records: Sequence[VersionRecord]) -> list[Written | Exception]:
        outcomes = super().write_many(records)
        for index, record in enumerate(records):
            if record.key == self.expire:
                self.items[record.key] = dataclasses.replace(record, volume_id=self.holder)
                outcomes[index] = self.answer
        return outcomes


ANSWERS = [Written.HELD, Written.KNOWN, RetryableError("read timeout")]


@pytest.mark.parametrize("answer", ANSWERS, ids=["held", "known", "failed"])
@pytest.mark.parametrize("holder", ["vol-test", "vol-other"], ids=["this-volume", "another"])
def test_a_version_expired_meanwhile_is_journalled_again_whatever_its_write_answered(
    tmp_path, committers, answer, holder
):
    """A lost answer makes a write that made the item answer "already recorded" or fail
    (the lost-answer review, 2026-12-02): the item is looked at all the same, and the
    version journalled again exactly when the item names this volume; never for an item
    of another volume's."""
    journal, _ = _journal(tmp_path)
    ledger = AnsweringLedger(journal, answer, holder)
    committer = Committer(journal, ledger)
    committers.append(committer)

    pending = committer.submit(_pending(_record(1)))

    if isinstance(answer, Exception):
        with pytest.raises(RetryableError):
            pending.wait(WAIT)
    else:
        assert pending.wait(WAIT) == "k1:known"
    assert [r.key for r in journal.read_all()] == (["k1"] if holder == "vol-test" else [])


@pytest.mark.parametrize("answer", ANSWERS, ids=["held", "known", "failed"])
def test_unasked_a_write_that_named_this_volume_or_failed_is_journalled_again(
    tmp_path, committers, answer
):
    """The item cannot be read: a HELD answer named this volume (journalled again, as a
    fresh one is), and so is a failed write (its first attempt may have made the item
    before its answer was lost and the retry failed: the session's review, 2026-12-02; an
    extra line only keeps this volume's own copy longer); a KNOWN one named another volume
    (not journalled: the journal never keeps a version for a copy another volume holds)."""
    journal, _ = _journal(tmp_path)
    ledger = AnsweringLedger(journal, answer, "vol-test")
    ledger.fail_get = RetryableError("ThrottlingException")
    committer = Committer(journal, ledger)
    committers.append(committer)

    pending = committer.submit(_pending(_record(1)))

    with contextlib.suppress(RetryableError):
        pending.wait(WAIT)
    again = answer is Written.HELD or isinstance(answer, Exception)
    assert [r.key for r in journal.read_all()] == (["k1"] if again else [])
