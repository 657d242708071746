"""Receiving ahead by default without walking unattempted messages into the DLQ (issue 19).

A message received ahead of the workers counts a receive toward the queue's
`maxReceiveCount` whether or not a worker starts it (SQS: "When the ReceiveCount for a
message exceeds the maxReceiveCount for a queue, Amazon SQS moves the message to a
dead-letter queue", https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/sqs-dead-letter-queues.html).
So a run receives ahead only when the run before it ended well (agent/pipeline/last_run.py).
A crash is what SIGKILL leaves: no visibility change, no delete, the run's file in place.
"""

from __future__ import annotations

import json
import queue
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from agent.config import parse_config
from agent.events import ObjectEvent
from agent.pipeline.backup import Outcome, Result
from agent.pipeline.consumer import Consumer, ConsumerSettings
from agent.pipeline.last_run import RUNNING_NAME, LastRun
from agent.runtime.wiring import consumer_settings
from tests.support.aws import QUEUE_URL
from tests.support.events import notification, s3_record
from tests.support.waiting import wait_until

MAX_RECEIVES = 3
AHEAD = 5
POISON = "poison.bin"  # kills the agent each time a worker starts it


@pytest.fixture
def sqs() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


@pytest.fixture
def queues(sqs) -> tuple[str, str]:
    dlq = sqs.create_queue(QueueName="backup-events-dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = {"deadLetterTargetArn": arn, "maxReceiveCount": str(MAX_RECEIVES)}
    url = sqs.create_queue(
        QueueName="backup-events", Attributes={"RedrivePolicy": json.dumps(redrive)}
    )["QueueUrl"]
    return str(url), str(dlq)


def default_settings(tmp_path, queue_url: str) -> ConsumerSettings:
    """The daemon's settings from a minimal configuration, made small and quick."""
    config = parse_config(
        {
            "queue": {"url": QUEUE_URL},
            "buckets": ["company-documents"],
            "storage": {"root": str(tmp_path)},
            "state": {"table": "backup-agent-objects"},
        }
    )
    settings = consumer_settings(config)
    assert settings.receive_ahead is True  # the default
    return replace(
        settings,
        queue_url=queue_url,
        workers=1,
        max_messages=AHEAD,
        wait_time_seconds=0,
        visibility_timeout=1,  # a killed run's messages come back within a second
    )


def kill(consumer: Consumer) -> None:
    """What SIGKILL leaves: nothing given back, nothing deleted, no clean end recorded."""
    consumer._receiving.clear()
    with consumer._lock:
        consumer._in_flight.clear()  # so no worker settles its message either
        consumer._lock.notify_all()
    while True:
        try:
            consumer._work.get_nowait()
        except queue.Empty:
            break
    consumer._stopped.set()
    for _ in consumer._workers:
        consumer._work.put(None)


def run(
    sqs: Any, settings: ConsumerSettings, last_run: LastRun | None, attempts: Counter[str]
) -> bool:
    """One run of the agent until the poison kills it (True) or the queue is empty."""
    holder: list[Consumer] = []
    died = threading.Event()

    def process(event: ObjectEvent) -> Result:
        attempts[event.key] += 1
        if event.key == POISON:
            consumer = holder[0]
            if consumer._receive_ahead and consumer._ahead_safe:
                # messages received ahead wait for this worker: let them arrive
                wait_until(lambda: consumer.in_flight() > 1, what="messages ahead")
            kill(consumer)
            died.set()
            raise RuntimeError("killed")  # settles nothing: the killed consumer holds nothing
        return Result(Outcome.STORED, event)

    consumer = Consumer(sqs, process, settings, last_run=last_run)
    holder.append(consumer)
    consumer.start()
    wait_until(
        lambda: died.is_set() or (consumer.is_idle() and not visible_or_hidden(sqs, settings)),
        timeout=20,
        what="the poison's kill, or an empty queue",
    )
    if not died.is_set():
        consumer.stop(5)
    for thread in consumer._threads:
        thread.join(10)
    # every thread of the run has ended: before the workers were listed before they ran, the
    # first run's worker, killed by its first message, was not among those `kill` stopped
    # and waited for work for ever (each such run then took the joins' 10 s)
    assert not [t.name for t in consumer._threads if t.is_alive()]
    consumer._deletes.close()
    return died.is_set()


def visible_or_hidden(sqs: Any, settings: ConsumerSettings) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=settings.queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def dead_lettered(sqs: Any, dlq: str) -> set[str]:
    keys: set[str] = set()
    while messages := sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10).get("Messages"):
        for message in messages:
            keys.add(json.loads(message["Body"])["Records"][0]["s3"]["object"]["key"])
            sqs.delete_message(QueueUrl=dlq, ReceiptHandle=message["ReceiptHandle"])
    return keys


def crash_loop(sqs, queues, settings, last_run) -> tuple[set[str], Counter[str], int]:
    url, dlq = queues
    for key in [POISON] + [f"object-{n}" for n in range(AHEAD)]:  # the poison first
        sqs.send_message(QueueUrl=url, MessageBody=notification(s3_record(key, sequencer="0A")))
    attempts: Counter[str] = Counter()
    crashes = 0
    for _ in range(MAX_RECEIVES + 2):
        if not run(sqs, settings, last_run, attempts):
            break
        crashes += 1
    return dead_lettered(sqs, dlq), attempts, crashes


def test_a_crash_loop_dead_letters_only_the_message_that_kills_the_agent(sqs, queues, tmp_path):
    """The first run receives a batch ahead and is killed: those five paid one receive for
    nothing. The runs after a kill receive one message per free worker, so the five are
    started before they could run out of receives; only the poison reaches the DLQ."""
    settings = default_settings(tmp_path, queues[0])

    dlq, attempts, crashes = crash_loop(sqs, queues, settings, LastRun(tmp_path))

    assert crashes == MAX_RECEIVES  # the poison killed every run it reached
    assert dlq == {POISON}
    assert all(attempts[f"object-{n}"] >= 1 for n in range(AHEAD))  # each one backed up
    assert not (tmp_path / RUNNING_NAME).exists()  # the last run stopped well


def test_without_the_last_run_check_the_same_loop_dead_letters_unattempted_messages(
    sqs, queues, tmp_path
):
    """The objection the check answers (docs/benchmarks.md): receiving ahead in every run."""
    settings = default_settings(tmp_path, queues[0])

    dlq, attempts, _ = crash_loop(sqs, queues, settings, None)

    never_started = {key for key in dlq if attempts[key] == 0}
    assert never_started  # walked into the DLQ without a single attempt


# -- the file that says how the last run ended ----------------------------------------------


def test_a_run_that_ends_well_lets_the_next_one_receive_ahead(tmp_path):
    assert LastRun(tmp_path).begin() is True  # a first run ever
    assert (tmp_path / RUNNING_NAME).exists()
    LastRun(tmp_path).end(well=True)
    assert not (tmp_path / RUNNING_NAME).exists()
    assert LastRun(tmp_path).begin() is True


def test_a_killed_run_or_one_that_gave_back_unstarted_messages_holds_the_next_back(tmp_path):
    assert LastRun(tmp_path).begin() is True
    assert LastRun(tmp_path).begin() is False  # killed: the file was left
    LastRun(tmp_path).end(well=False)
    assert LastRun(tmp_path).begin() is False
    LastRun(tmp_path).end(well=True)
    assert LastRun(tmp_path).begin() is True


def test_a_run_that_cannot_mark_itself_does_not_receive_ahead(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    assert LastRun(not_a_directory).begin() is False


def test_stop_giving_back_messages_received_ahead_holds_the_next_run_back(sqs, queues, tmp_path):
    url, _ = queues
    for n in range(AHEAD):
        sqs.send_message(QueueUrl=url, MessageBody=notification(s3_record(f"k{n}")))
    gate = threading.Event()

    def slow(event: ObjectEvent) -> Result:
        gate.wait(15)
        return Result(Outcome.STORED, event)

    settings = replace(default_settings(tmp_path, url), visibility_timeout=30)
    consumer = Consumer(sqs, slow, settings, last_run=LastRun(tmp_path))
    consumer.start()
    wait_until(lambda: consumer.in_flight() == AHEAD, what="one working, four ahead")
    stopper = threading.Thread(target=consumer.stop, args=(10,))
    stopper.start()
    wait_until(lambda: consumer.in_flight() == 1, what="the four given back")
    gate.set()
    stopper.join(15)

    assert (tmp_path / RUNNING_NAME).exists()
    assert LastRun(tmp_path).begin() is False
