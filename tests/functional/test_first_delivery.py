"""A first delivery skips the ledger look-up; the conditional write still catches duplicates."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.events import parse_message
from agent.pipeline.backup import BackupService, Outcome
from agent.pipeline.delivery import Delivery, delivering
from agent.runtime.wiring import compression_settings
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE, receive_all
from tests.support.service import make_service


@pytest.fixture
def calls(aws) -> Counter[str]:
    """Count the API calls the service makes, by operation name."""
    counted: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        counted[model.name] += 1

    for client in (aws.s3, aws.dynamodb):
        client.meta.events.register("before-call.*.*", lambda model, **kw: count(model))
    return counted


@pytest.fixture
def service(aws, config, volume) -> BackupService:
    return BackupService(
        s3=aws.s3,
        volume=volume,
        journal=Journal(volume.journal_dir),
        ledger=Ledger(aws.dynamodb, TABLE),
        volume_id="vol-test",
        buckets=frozenset([BUCKET]),
        compression=compression_settings(config),
    )


def _uploaded_event(aws, key: str, body: bytes):
    aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    [message] = receive_all(aws)
    return parse_message(message["Body"]).events[0]


def test_first_delivery_is_stored_without_a_ledger_lookup(aws, service, calls):
    event = _uploaded_event(aws, "first.txt", b"fresh bytes " * 100)
    calls.clear()

    with delivering(Delivery("m-1", receive_count=1)):
        result = service.process(event)

    assert result.outcome is Outcome.STORED
    assert calls["GetItem"] == 0
    assert calls["PutItem"] == 2  # the version and LATEST
    latest = Ledger(aws.dynamodb, TABLE).latest(BUCKET, "first.txt")
    assert latest is not None and latest.sha256 == result.copy.sha256


def test_duplicate_event_in_a_second_message_is_answered_from_memory(aws, service, calls):
    event = _uploaded_event(aws, "twice.txt", b"same event twice " * 50)
    with delivering(Delivery("m-1", receive_count=1)):
        first = service.process(event)
    calls.clear()

    with capture_logs() as logs, delivering(Delivery("m-2", receive_count=1)):
        second = service.process(event)

    assert first.outcome is Outcome.STORED
    assert second.outcome is Outcome.ALREADY_DONE
    assert [e["event"] for e in logs if e["event"].startswith("backup.")] == ["backup.duplicate"]
    assert sum(calls.values()) == 0  # no look-up, no download, no write


def test_after_a_restart_a_duplicate_event_is_caught_by_the_conditional_write(
    aws, config, volume, service, journal_lines
):
    event = _uploaded_event(aws, "restart.txt", b"same event after a restart " * 50)
    with delivering(Delivery("m-1", receive_count=1)):
        first = service.process(event)
    restarted = make_service(aws, volume)  # a new process: nothing recorded lately

    with capture_logs() as logs, delivering(Delivery("m-2", receive_count=1)):
        second = restarted.process(event)

    assert second.outcome is Outcome.ALREADY_DONE
    assert [e["event"] for e in logs if e["event"].startswith("backup.")] == ["backup.duplicate"]
    versions = Ledger(aws.dynamodb, TABLE).versions(BUCKET, "restart.txt")
    assert [v.backup_time for v in versions] == [first.record.backup_time]
    assert journal_lines() == 2  # a harmless second journal line; replay is idempotent


def test_first_delivery_of_a_recorded_version_whose_copy_is_gone_repairs_it(aws, service, volume):
    event = _uploaded_event(aws, "repair.txt", b"copy lost since " * 50)
    with delivering(Delivery("m-1", receive_count=1)):
        first = service.process(event)
    volume.copy_path(first.copy.sha256).unlink()

    with delivering(Delivery("m-2", receive_count=1)):
        second = service.process(event)

    assert second.outcome is Outcome.STORED  # fresh bytes on disk: a repair, not a no-op
    assert volume.has_copy(first.copy.sha256)
    assert volume.copy_path(first.copy.sha256).is_file()


def test_redelivery_of_a_recorded_version_is_not_downloaded_again(aws, service, calls):
    event = _uploaded_event(aws, "again.txt", b"recorded already " * 50)
    with delivering(Delivery("m-1", receive_count=1)):
        service.process(event)
    calls.clear()

    with delivering(Delivery("m-1", receive_count=2)):
        result = service.process(event)

    assert result.outcome is Outcome.ALREADY_DONE
    # the look-up, then LATEST advanced and the item looked at again (`Ledger.advance`: it
    # never writes the version item, which a PutItem could recreate after retention)
    assert calls["GetItem"] == 2 and calls["PutItem"] == 1
    assert calls["GetObject"] == 0


def test_outside_a_consumer_the_lookup_still_runs(aws, service, calls):
    event = _uploaded_event(aws, "direct.txt", b"no delivery context " * 20)
    service.process(event)
    calls.clear()

    result = service.process(event)

    assert result.outcome is Outcome.ALREADY_DONE
    assert calls["GetObject"] == 0


@pytest.fixture
def journal_lines(volume):
    def count() -> int:
        return sum(1 for _ in Journal(volume.journal_dir).read_all())

    return count


def test_the_consumer_tells_the_processor_the_receive_count(aws, config):
    import time

    from agent.pipeline import delivery
    from agent.pipeline.backup import Result
    from agent.pipeline.consumer import Consumer
    from agent.runtime.wiring import consumer_settings

    seen: list[int] = []

    def process(event) -> Result:
        current = delivery.current()
        seen.append(current.receive_count if current else 0)
        if len(seen) == 1:
            raise RuntimeError("fail the first attempt")
        return Result(Outcome.STORED, event)

    consumer = Consumer(aws.sqs, process, consumer_settings(config))  # retries after ~1 s
    aws.s3.put_object(Bucket=BUCKET, Key="counted.txt", Body=b"x")
    consumer.start()
    try:
        deadline = time.monotonic() + 15
        while len(seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        consumer.stop(5)

    assert seen == [1, 2]
    assert delivery.current() is None
