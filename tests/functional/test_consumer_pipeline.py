"""Consumer + BackupService + volume + ledger against moto: messages settle as the issue says."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from agent.aws import Clients
from agent.pipeline.backup import BackupService
from agent.pipeline.consumer import Consumer
from agent.runtime.wiring import compression_settings, consumer_settings
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support import service
from tests.support.aws import BUCKET, QUEUE_URL, TABLE, bootstrapped_aws, make_config, queue_counts
from tests.support.aws_hooks import Fault, inject, record_calls
from tests.support.events import notification, s3_record
from tests.support.waiting import wait_until


def make_service(aws: Clients, config, volume) -> BackupService:
    return service.make_service(aws, volume, compression=compression_settings(config))


def start(consumers: list[Consumer], aws: Clients, service: BackupService, settings) -> Consumer:
    consumer = Consumer(aws.sqs, service.process, settings)
    consumers.append(consumer)
    consumer.start()
    return consumer


def upload(aws: Clients, key: str, body: bytes) -> dict[str, Any]:
    """Put an object; return the fields its S3 event would carry. moto's own event is purged:
    the test sends the real-shaped one (with versionId and sequencer) itself."""
    response = aws.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    drain(aws)
    return {"eTag": response["ETag"].strip('"'), "size": len(body)}


def drain(aws: Clients) -> None:
    """Delete moto's own notifications (PurgeQueue works only once a minute)."""
    while messages := aws.sqs.receive_message(QueueUrl=QUEUE_URL, MaxNumberOfMessages=10).get(
        "Messages"
    ):
        for message in messages:
            aws.sqs.delete_message(QueueUrl=QUEUE_URL, ReceiptHandle=message["ReceiptHandle"])


def test_a_message_is_deleted_only_when_every_record_is_done(aws, config, volume, consumers):
    first = upload(aws, "batch/first.txt", b"first object " * 100)
    second = upload(aws, "batch/second.txt", b"second object " * 100)
    calls = record_calls(aws.s3)
    inject(
        aws.s3,
        Fault(
            "GetObject",
            "SlowDown",
            status=503,
            when=lambda params: params["Key"] == "batch/second.txt",
            times=1,
        ),
    )
    aws.sqs.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=notification(
            s3_record("batch/first.txt", sequencer="0A", **first),
            s3_record("batch/second.txt", sequencer="0B", **second),
        ),
    )
    sqs_calls = record_calls(aws.sqs)
    # A retry delay that rounds down to 0 s: the redelivery comes at once.
    settings = replace(consumer_settings(config), retry_base_seconds=0.5)
    consumer = start(consumers, aws, make_service(aws, config, volume), settings)

    wait_until(lambda: sqs_calls.deleted_handles(), what="the message deleted")

    operations = [op for op in sqs_calls.operations() if op != "ReceiveMessage"]
    assert operations == ["ChangeMessageVisibility", "DeleteMessageBatch"]  # released, deleted
    assert [p["Key"] for p in calls.of("GetObject")].count("batch/first.txt") == 1
    assert consumer.stats.outcomes == {"stored": 2, "already_done": 1}
    ledger = Ledger(aws.dynamodb, TABLE)
    for key in ("batch/first.txt", "batch/second.txt"):
        latest = ledger.latest(BUCKET, key)
        assert latest is not None
        volume.verify_copy(latest.sha256, latest.size)
    assert (
        ledger.latest(BUCKET, "batch/first.txt").sha256
        == hashlib.sha256(b"first object " * 100).hexdigest()
    )
    assert len(list(Journal(volume.journal_dir).read_all())) == 2
    assert queue_counts(aws.sqs) == (0, 0)


def test_an_object_gone_since_its_event_finishes_the_record(aws, config, volume, consumers):
    fields = upload(aws, "short-lived.txt", b"here briefly")
    aws.s3.delete_object(Bucket=BUCKET, Key="short-lived.txt")
    drain(aws)
    aws.sqs.send_message(
        QueueUrl=QUEUE_URL, MessageBody=notification(s3_record("short-lived.txt", **fields))
    )
    consumer = start(consumers, aws, make_service(aws, config, volume), consumer_settings(config))
    wait_until(lambda: queue_counts(aws.sqs) == (0, 0), what="the message deleted")
    assert consumer.stats.outcomes == {"gone": 1}
    assert list(volume.objects_dir.rglob("*.zst")) == []


def test_a_foreign_bucket_event_is_left_for_the_redrive(aws, config, volume, consumers):
    aws.sqs.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=notification(s3_record("x.txt", bucket="someone-elses-bucket", size=3)),
    )
    consumer = start(consumers, aws, make_service(aws, config, volume), consumer_settings(config))
    wait_until(lambda: consumer.stats.backups_failed == 1 and consumer.is_idle(), what="failure")
    assert queue_counts(aws.sqs) == (0, 1)
    assert consumer.stats.failures == {"PermanentError": 1}


@pytest.fixture
def redriving(backup_root) -> Iterator[tuple[Clients, Any]]:
    """moto with a queue whose redrive policy moves a message after 3 receives."""
    config = make_config(
        backup_root,
        queue={"url": QUEUE_URL, "wait_time_seconds": 0, "max_receive_count": 3},
    )
    with bootstrapped_aws(config) as clients:
        yield clients, config


def test_a_malformed_message_reaches_the_dead_letter_queue_and_work_goes_on(
    redriving, volume, consumers
):
    aws, config = redriving
    dlq_url = aws.sqs.get_queue_url(QueueName=config.queue.dead_letter_name)["QueueUrl"]
    aws.sqs.send_message(QueueUrl=QUEUE_URL, MessageBody='{"Records": [{"bogus": 1}]}')
    consumer = start(consumers, aws, make_service(aws, config, volume), consumer_settings(config))

    wait_until(lambda: queue_counts(aws.sqs, dlq_url)[0] == 1, what="the redrive to the DLQ")
    fields = upload(aws, "after-poison.txt", b"still flowing")
    aws.sqs.send_message(
        QueueUrl=QUEUE_URL, MessageBody=notification(s3_record("after-poison.txt", **fields))
    )
    wait_until(lambda: consumer.stats.outcomes["stored"] == 1, what="the next object")

    (dead,) = aws.sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert dead["Body"] == '{"Records": [{"bogus": 1}]}'
    assert consumer.stats.failures["malformed"] == 3  # one release per receive, then redriven
