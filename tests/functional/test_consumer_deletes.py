"""The consumer deletes finished messages in batches, and never before their work is done."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from agent.backup import Outcome, Result
from agent.consumer import Consumer
from agent.daemon import consumer_settings
from tests.conftest import BUCKET, QUEUE_URL


def _queue_counts(aws) -> tuple[int, int]:
    attrs = aws.sqs.get_queue_attributes(
        QueueUrl=QUEUE_URL,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def _wait_until(predicate, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def sqs_calls(aws) -> Counter[str]:
    counted: Counter[str] = Counter()
    aws.sqs.meta.events.register(
        "before-call.sqs.*", lambda model, **_: counted.update([model.name])
    )
    return counted


def test_finished_messages_are_deleted_in_batches(aws, config, sqs_calls):
    processed: list[str] = []
    consumer = Consumer(
        aws.sqs,
        lambda event: processed.append(event.key) or Result(Outcome.STORED, event),
        consumer_settings(config),
    )
    for index in range(30):
        aws.s3.put_object(Bucket=BUCKET, Key=f"batch/{index}.txt", Body=b"x")

    consumer.start()
    try:
        assert _wait_until(lambda: len(processed) == 30 and _queue_counts(aws) == (0, 0))
    finally:
        consumer.stop(5)

    assert sqs_calls["DeleteMessage"] == 0
    assert 3 <= sqs_calls["DeleteMessageBatch"] < 30


def test_a_message_is_not_deleted_while_its_work_runs(aws, config):
    release = threading.Event()
    started = threading.Event()

    def slow(event) -> Result:
        started.set()
        release.wait(10)
        return Result(Outcome.STORED, event)

    consumer = Consumer(aws.sqs, slow, consumer_settings(config))
    aws.s3.put_object(Bucket=BUCKET, Key="slow.txt", Body=b"x")
    consumer.start()
    try:
        assert started.wait(10)
        assert consumer._deletes.pending() == 0
        assert _queue_counts(aws) == (0, 1)  # in flight, not deleted

        release.set()
        assert _wait_until(lambda: _queue_counts(aws) == (0, 0))
    finally:
        release.set()
        consumer.stop(5)


def test_stop_sends_the_deletes_still_waiting_for_a_batch(aws, config):
    consumer = Consumer(
        aws.sqs, lambda event: Result(Outcome.STORED, event), consumer_settings(config)
    )
    consumer._deletes.max_delay = 3600  # a partial batch would otherwise wait "forever"
    aws.s3.put_object(Bucket=BUCKET, Key="last.txt", Body=b"x")
    consumer.start()
    try:
        assert _wait_until(consumer.is_idle)
        assert _wait_until(lambda: consumer._deletes.pending() == 1)
    finally:
        consumer.stop(5)

    assert consumer._deletes.pending() == 0
    assert _queue_counts(aws) == (0, 0)
