"""The commit stage with the real write path against moto (agent/pipeline/commit.py, issue 19):
the worker's part ends with the copy durable on the volume; the committer writes the
journal line and the ledger record; only then is the message deleted, ``backup.stored``
logged and the version counted; the snapshot barrier covers the copy until its record.

The ledger's `record` is held on a condition for the key under test: every step is waited
for, never timed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from agent.aws import Clients
from agent.events import parse_message
from agent.monitoring.monitor import Monitoring
from agent.pipeline.backup import Outcome, Result
from agent.pipeline.commit import Committer, Pending
from agent.pipeline.consumer import Consumer
from agent.records import VersionRecord
from agent.runtime.wiring import compression_settings, consumer_settings
from agent.stats import Stats
from agent.storage.barrier import BarrierTimeout, WriteBarrier
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger, Written
from tests.support import service
from tests.support.aws import BUCKET, QUEUE_URL, TABLE
from tests.support.aws_hooks import record_calls
from tests.support.committing import committing_service, put_and_queue
from tests.support.events import notification, s3_record
from tests.support.waiting import wait_until

WAIT = 30


class HeldLedger(Ledger):
    """The moto ledger, whose writes of a key in `held` wait until `release` is set: through
    `write` or `write_many`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.held: set[str] = set()
        self.release = threading.Event()
        self.waiting = threading.Event()

    def _hold(self, keys: list[str]) -> None:
        if self.held.intersection(keys):
            self.waiting.set()
            assert self.release.wait(WAIT)

    def write(self, record: VersionRecord) -> Written:
        self._hold([record.key])
        return super().write(record)

    def write_many(self, records: Sequence[VersionRecord]) -> list[Written | Exception]:
        self._hold([r.key for r in records])
        return super().write_many(records)


def recorded(aws: Clients, key: str) -> VersionRecord | None:
    return Ledger(aws.dynamodb, TABLE).latest(BUCKET, key)


@pytest.fixture
def ledger(aws: Clients) -> Iterator[HeldLedger]:
    held = HeldLedger(aws.dynamodb, TABLE)
    yield held
    held.release.set()  # no committer left waiting


def queue(aws: Clients, *objects: tuple[str, bytes]) -> None:
    put_and_queue(aws, objects)


def test_the_worker_moves_on_once_the_copy_is_durable_and_the_rest_follows_the_record(
    aws, config, volume, ledger, consumers, committers
):
    ledger.held.add("first.txt")
    backup = committing_service(aws, config, volume, ledger)
    committers.append(backup.committer)
    settings = replace(consumer_settings(config), workers=1, receive_ahead=False)
    consumer = Consumer(aws.sqs, backup.process, settings)
    consumers.append(consumer)
    queue(aws, ("first.txt", b"first " * 100), ("second.txt", b"second " * 100))
    sqs_calls = record_calls(aws.sqs)

    with capture_logs() as logs:
        consumer.start()
        assert ledger.waiting.wait(WAIT)  # the committer is writing first.txt's record
        second = hashlib.sha256(b"second " * 100).hexdigest()
        # one worker: it copied second.txt while first.txt's record was still being written
        wait_until(lambda: volume.has_copy(second), what="the second copy made")
        stored = [e["key"] for e in logs if e["event"] == "backup.stored"]
        assert stored == []  # neither is recorded yet: neither is said stored
        assert sqs_calls.deleted_handles() == []
        assert consumer.stats.snapshot().outcomes == {}
        assert consumer.in_flight() == 2
        assert recorded(aws, "second.txt") is None

        ledger.release.set()
        wait_until(lambda: len(sqs_calls.deleted_handles()) == 2, what="both deleted")

    assert [e["key"] for e in logs if e["event"] == "backup.stored"] == [
        "first.txt",
        "second.txt",
    ]
    assert consumer.stats.snapshot().outcomes == {"stored": 2}
    assert [r.key for r in Journal(volume.journal_dir).read_all()] == ["first.txt", "second.txt"]
    assert recorded(aws, "first.txt") is not None
    assert recorded(aws, "second.txt").sha256 == second


def test_the_snapshot_barrier_covers_a_copy_until_its_record_is_written(
    aws, config, volume, ledger, consumers, committers
):
    ledger.held.add("held.txt")
    barrier = WriteBarrier(volume.root)
    backup = committing_service(aws, config, volume, ledger, barrier=barrier)
    committers.append(backup.committer)
    consumer = Consumer(aws.sqs, backup.process, replace(consumer_settings(config), workers=1))
    consumers.append(consumer)
    queue(aws, ("held.txt", b"held " * 100))
    sqs_calls = record_calls(aws.sqs)
    consumer.start()

    assert ledger.waiting.wait(WAIT)  # renamed into place, journalled, record under way
    with pytest.raises(BarrierTimeout), barrier.exclusive(timeout=0.2):
        pass  # a snapshot now would hold a copy the ledger does not know yet

    ledger.release.set()
    wait_until(lambda: sqs_calls.deleted_handles(), what="deleted")
    with barrier.exclusive(timeout=WAIT):  # released once recorded
        pass


def test_outside_the_consumer_a_backup_is_recorded_before_process_returns(
    aws, config, volume, ledger, committers
):
    backup = committing_service(aws, config, volume, ledger)
    committers.append(backup.committer)
    queue(aws, ("direct.txt", b"direct"))
    [message] = aws.sqs.receive_message(QueueUrl=QUEUE_URL)["Messages"]
    [event] = parse_message(message["Body"]).events

    result = backup.process(event)  # as reconcile and scrub call it: no delivery

    assert result.pending is None
    assert result.outcome.value == "stored"
    assert recorded(aws, "direct.txt") is not None
    assert backup.committer is not None and backup.committer.commits == 0


def test_monitoring_observes_a_committing_backup_once_it_is_recorded(aws, config):
    monitoring = Monitoring(config, aws, stats=Stats())
    [event] = parse_message(notification(s3_record("m.txt", size=1, sequencer="0A"))).events
    record = VersionRecord.for_event(event, backup_time=event.event_time, volume_id="vol-test")
    pending: Pending[Result] = Pending(record, lambda _fresh: Result(Outcome.STORED, event))

    answer = monitoring.observe(lambda e: Result(Outcome.COMMITTING, e, record, None, pending))(
        event
    )

    assert answer.pending is pending
    assert monitoring.observations.drain() == {}  # nothing observed before the record
    pending.resolve(Result(Outcome.STORED, event, record))
    assert set(monitoring.observations.drain()) == {"BackupLagSeconds"}
    failed: Pending[Result] = Pending(record, lambda _fresh: Result(Outcome.STORED, event))
    monitoring.observe(lambda e: Result(Outcome.COMMITTING, e, record, None, failed))(event)
    failed.resolve(RuntimeError("throttled"))
    assert monitoring.observations.drain() == {}  # a failed record is not a backup


def test_the_copys_directory_is_fsynced_by_the_committer_before_its_journal_line(
    aws, config, volume, ledger, consumers, committers, monkeypatch
):
    # issue 19: the worker fsyncs the copy's bytes before the rename; the committer fsyncs
    # the rename's directory before the batch's journal append (docs/reliability.md)
    fsyncs: list[tuple[str, str]] = []  # (thread, path), in order
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        fsyncs.append((threading.current_thread().name, os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    journal = Journal(volume.journal_dir)
    backup = service.make_service(
        aws,
        volume,
        compression=compression_settings(config),
        journal=journal,
        ledger=ledger,
        committer=Committer(journal, ledger, directories=volume.sync_directories),
    )
    committers.append(backup.committer)
    consumer = Consumer(aws.sqs, backup.process, replace(consumer_settings(config), workers=1))
    consumers.append(consumer)
    body = b"synced " * 100
    sha = hashlib.sha256(body).hexdigest()
    (volume.objects_dir / sha[:2]).mkdir(parents=True, exist_ok=True)  # not a new prefix
    queue(aws, ("synced.txt", body))
    sqs_calls = record_calls(aws.sqs)
    consumer.start()
    wait_until(lambda: sqs_calls.deleted_handles(), what="deleted")

    directory = str(volume.copy_path(sha).parent)
    at = {path: index for index, (_, path) in enumerate(fsyncs)}
    [temp] = [i for i, (_, path) in enumerate(fsyncs) if path.startswith(str(volume.tmp_dir))]
    journal_line = min(i for i, (_, path) in enumerate(fsyncs) if "journal" in path)
    assert fsyncs[temp][0] != "committer"  # the worker: its copy's bytes, before the rename
    assert [name for name, path in fsyncs if path == directory] == ["committer"]
    assert temp < at[directory] < journal_line
    assert [r.key for r in journal.read_all()] == ["synced.txt"]

    # a version of the same bytes recorded inline (reconcile, no delivery) finds the copy
    # whose directory is synced already: nothing left to sync, its journal line follows
    # (the consumer stopped first: it would otherwise race this test for the message)
    consumer.stop(WAIT)
    queue(aws, ("again.txt", body))
    [message] = aws.sqs.receive_message(QueueUrl=QUEUE_URL)["Messages"]
    [event] = parse_message(message["Body"]).events
    assert backup.process(event).outcome is Outcome.DEDUPLICATED
