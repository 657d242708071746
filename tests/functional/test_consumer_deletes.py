"""The consumer deletes finished messages in batches, and never before their work is done."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from agent.pipeline.backup import Outcome, Result
from agent.pipeline.consumer import Consumer
from agent.runtime.wiring import consumer_settings
from tests.support.aws import BUCKET, count_sqs_calls, queue_counts
from tests.support.waiting import wait_until


@pytest.fixture
def sqs_calls(aws) -> Counter[str]:
    return count_sqs_calls(aws.sqs)


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
        wait_until(lambda: len(processed) == 30 and queue_counts(aws.sqs) == (0, 0))
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
        assert queue_counts(aws.sqs) == (0, 1)  # in flight, not deleted

        release.set()
        wait_until(lambda: queue_counts(aws.sqs) == (0, 0))
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
        wait_until(consumer.is_idle)
        wait_until(lambda: consumer._deletes.pending() == 1)
    finally:
        consumer.stop(5)

    assert consumer._deletes.pending() == 0
    assert queue_counts(aws.sqs) == (0, 0)
