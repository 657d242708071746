# ruff: noqa: F811 - the fixtures imported from test_consumer are parameters here
"""The consumer with a commit stage (agent/pipeline/commit.py), against moto SQS: a message
whose records wait for the committer stays in flight and is settled only once they are
resolved, as a failed `process` would be when one fails.

The processor answers COMMITTING with a `Pending` the test resolves itself: each outcome of
a commit is chosen, none is timed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from agent.errors import DiskFull, PermanentError, RetryableError
from agent.events import ObjectEvent
from agent.pipeline.backup import Outcome, Result
from agent.pipeline.commit import Committer, Pending
from agent.pipeline.consumer import Consumer, ConsumerSettings
from agent.records import VersionRecord
from agent.stats import Stats
from tests.support.aws_hooks import record_calls
from tests.support.events import notification, s3_record
from tests.support.waiting import wait_until
from tests.unit.test_consumer import (  # noqa: F401 - fixtures
    deleted_ids,
    gate,
    make_consumer,
    put_message,
    queue_url,
    send,
    sqs,
    visibility_changes,
)
from tests.unit.test_consumer_pause import NEARLY_FULL, FakeCheck, Listener


def _record(event: ObjectEvent) -> VersionRecord:
    return VersionRecord.for_event(event, backup_time=event.event_time, volume_id="vol-test")


class Committing:
    """Answers every event with COMMITTING; the test resolves each key's Pending."""

    def __init__(self) -> None:
        self.pending: dict[str, Pending[Result]] = {}
        self.events: dict[str, ObjectEvent] = {}
        self._lock = threading.Lock()

    def __call__(self, event: ObjectEvent) -> Result:
        pending: Pending[Result] = Pending(
            _record(event), lambda _fresh: Result(Outcome.STORED, event)
        )
        with self._lock:
            self.pending[event.key] = pending
            self.events[event.key] = event
        return Result(Outcome.COMMITTING, event, pending=pending)

    def started(self) -> int:
        with self._lock:
            return len(self.pending)

    def recorded(self, key: str) -> None:
        with self._lock:
            pending, event = self.pending[key], self.events[key]
        pending.resolve(Result(Outcome.STORED, event))

    def failed(self, key: str, error: Exception) -> None:
        with self._lock:
            pending = self.pending[key]
        pending.resolve(error)


def test_a_message_is_deleted_only_once_its_record_is_committed(sqs, queue_url, make_consumer):
    calls = record_calls(sqs)
    process = Committing()
    stats = Stats()
    consumer = make_consumer(process, workers=1)
    consumer.stats = stats
    message_id = send(sqs, queue_url, put_message("a"))
    consumer.start()

    wait_until(lambda: process.started() == 1, what="processed")
    wait_until(lambda: consumer._committing == 1, what="waiting for the committer")
    assert deleted_ids(calls) == []
    assert consumer.in_flight() == 1  # still held: the heartbeat keeps extending it
    assert stats.snapshot().outcomes == {}  # not counted before it is recorded

    process.recorded("a")

    wait_until(lambda: deleted_ids(calls) == [message_id], what="deleted")
    wait_until(lambda: consumer.in_flight() == 0, what="settled")
    assert stats.snapshot().outcomes == {"stored": 1}


def test_the_heartbeat_extends_a_message_waiting_for_the_committer(sqs, queue_url, make_consumer):
    calls = record_calls(sqs)
    process = Committing()
    consumer = make_consumer(process, workers=1, visibility_timeout=2)
    message_id = send(sqs, queue_url, put_message("a"))
    consumer.start()

    wait_until(lambda: consumer._committing == 1, what="waiting for the committer")
    wait_until(lambda: (message_id, 2) in visibility_changes(calls), what="extended")
    process.recorded("a")
    wait_until(lambda: deleted_ids(calls) == [message_id], what="deleted")


def test_messages_waiting_for_the_committer_count_toward_the_receive_limit(
    sqs, queue_url, make_consumer
):
    calls = record_calls(sqs)
    process = Committing()
    consumer = make_consumer(process, workers=1, max_messages=2)
    ids = [send(sqs, queue_url, put_message(f"k{n}")) for n in range(6)]
    consumer.start()

    # one worker, and up to max_messages (2) committing besides: 3 in flight, no more
    wait_until(lambda: process.started() == 3, what="three started")
    wait_until(lambda: consumer._committing == 3, what="all three committing")
    with consumer._lock:
        assert consumer._room() == 0
    assert consumer.in_flight() == 3

    for n in range(6):
        wait_until(lambda n=n: process.started() > n, what=f"k{n} started")
        process.recorded(f"k{n}")
    wait_until(lambda: sorted(deleted_ids(calls)) == sorted(ids), what="all deleted")


def test_a_failed_commit_is_retried_and_the_others_are_deleted(sqs, queue_url, make_consumer):
    calls = record_calls(sqs)
    process = Committing()
    consumer = make_consumer(process, workers=1, retry_base_seconds=40)
    good = send(sqs, queue_url, put_message("good"))
    bad = send(sqs, queue_url, put_message("bad"))
    consumer.start()

    wait_until(lambda: process.started() == 2, what="both processed")
    process.failed("bad", RetryableError("ProvisionedThroughputExceededException"))
    process.recorded("good")

    wait_until(lambda: deleted_ids(calls) == [good], what="the good one deleted")
    wait_until(lambda: consumer.in_flight() == 0, what="settled")
    [(_, seconds)] = [c for c in visibility_changes(calls) if c[0] == bad]
    assert 32 <= seconds <= 48  # the retry delay of a first receive, jittered
    assert bad not in deleted_ids(calls)


def test_a_permanent_commit_failure_is_left_for_the_dead_letter_queue(
    sqs, queue_url, make_consumer
):
    calls = record_calls(sqs)
    process = Committing()
    consumer = make_consumer(process, workers=1)
    send(sqs, queue_url, put_message("a"))
    consumer.start()

    wait_until(lambda: process.started() == 1, what="processed")
    process.failed("a", PermanentError("ValidationException"))

    wait_until(lambda: consumer.in_flight() == 0, what="settled")
    assert deleted_ids(calls) == []
    assert visibility_changes(calls) == []  # left invisible: SQS redrives it


def test_a_commit_that_finds_the_volume_full_pauses_the_consumer(sqs, queue_url, make_consumer):
    calls = record_calls(sqs)
    process = Committing()
    listener = Listener()
    check = FakeCheck()
    consumer = make_consumer(process, workers=1)
    consumer.volume_check = check
    consumer.listener = listener
    message_id = send(sqs, queue_url, put_message("a"))
    consumer.start()

    wait_until(lambda: process.started() == 1, what="processed")
    check.verdict = NEARLY_FULL
    process.failed("a", DiskFull("journal: No space left on device"))

    wait_until(lambda: listener.paused, what="paused")
    wait_until(lambda: (message_id, 0) in visibility_changes(calls), what="given back")
    assert deleted_ids(calls) == []


def test_stop_gives_back_what_the_committer_has_not_recorded_by_the_deadline(
    sqs, queue_url, make_consumer
):
    calls = record_calls(sqs)
    process = Committing()
    consumer = make_consumer(process, workers=1)
    message_id = send(sqs, queue_url, put_message("a"))
    consumer.start()
    wait_until(lambda: consumer._committing == 1, what="waiting for the committer")

    consumer.stop(0.2)

    assert (message_id, 0) in visibility_changes(calls)  # visible again at once
    process.recorded("a")  # recorded after all: the message is not deleted by this run
    assert deleted_ids(calls) == []


@pytest.mark.parametrize("outcomes", [["ok", "ok"], ["ok", "retry"]])
def test_a_message_of_two_records_settles_once_both_are_resolved(
    sqs, queue_url, make_consumer, outcomes: list[str]
):
    calls = record_calls(sqs)
    process = Committing()
    consumer = make_consumer(process, workers=1)
    body = notification(s3_record("x", size=1, sequencer="0A"), s3_record("y", size=1))
    message_id = send(sqs, queue_url, body)
    consumer.start()
    wait_until(lambda: process.started() == 2, what="both records processed")

    process.recorded("x")
    assert deleted_ids(calls) == []  # one record of two: not yet
    if outcomes[1] == "ok":
        process.recorded("y")
        wait_until(lambda: deleted_ids(calls) == [message_id], what="deleted")
    else:
        process.failed("y", RetryableError("throttled"))
        wait_until(lambda: consumer.in_flight() == 0, what="settled")
        assert deleted_ids(calls) == []
        assert [c[0] for c in visibility_changes(calls)] == [message_id]


class Expected(Committer):
    """A committer that notes what the consumer tells it: each `expect` change, their sum,
    and what `follow` gave."""

    def __init__(self) -> None:
        super().__init__(journal=None, ledger=None)  # type: ignore[arg-type]  # never commits
        self.changes: list[int] = []
        self.followed: Callable[[], int] | None = None
        self.workers: Callable[[], int] | None = None
        self._lock = threading.Lock()

    def expect(self, change: int) -> None:
        with self._lock:
            self.changes.append(change)

    def follow(
        self, received_ahead: Callable[[], int], workers: Callable[[], int] = lambda: 1
    ) -> None:
        self.followed = received_ahead
        self.workers = workers

    def total(self) -> int:
        with self._lock:
            return sum(self.changes)


def test_a_busy_worker_tells_the_committer_records_may_come(sqs, queue_url, gate):
    """A worker counts in `expect` from the message it starts until it finds none received
    and waiting; messages received ahead keep it counted (no 0 between two of them, which
    would commit a batch of one while the next record is on its way)."""
    expected = Expected()
    started: list[str] = []

    def process(event: ObjectEvent) -> Result:
        started.append(event.key)
        assert gate.wait(30)
        return Result(Outcome.STORED, event)

    settings = ConsumerSettings(
        queue_url=queue_url, workers=1, wait_time_seconds=0, visibility_timeout=30,
        receive_ahead=True,
    )  # fmt: skip
    consumer = Consumer(sqs, process, settings, committer=expected)
    sqs.send_message_batch(
        QueueUrl=queue_url,
        Entries=[{"Id": key, "MessageBody": put_message(key)} for key in ("a", "b")],
    )
    consumer.start()
    try:
        wait_until(lambda: len(started) == 1, what="the first message started")
        wait_until(lambda: consumer.in_flight() == 2, what="the second received ahead")
        assert expected.total() == 1  # busy: a record may come
        assert expected.followed is not None
        assert expected.followed() == 1  # the second, received ahead, waits for the worker
        assert expected.workers is not None and expected.workers() == 1
        gate.set()
        wait_until(lambda: consumer.in_flight() == 0, what="both settled")
        wait_until(lambda: expected.total() == 0, what="idle again")
        assert sorted(started) == ["a", "b"]
        assert expected.changes == [1, -1]  # counted once across both messages
    finally:
        consumer.stop(5)
