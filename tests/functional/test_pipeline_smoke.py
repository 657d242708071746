"""Given a bootstrapped moto account, when objects are uploaded, the consumer backs them up."""

from __future__ import annotations

import time

from agent.pipeline.consumer import Consumer
from agent.runtime.wiring import compression_settings, consumer_settings
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.service import make_service


def test_uploaded_objects_are_backed_up_and_messages_deleted(aws, config, volume):
    service = make_service(aws, volume, compression=compression_settings(config))
    consumer = Consumer(aws.sqs, service.process, consumer_settings(config))
    aws.s3.put_object(Bucket=BUCKET, Key="reports/q1 summary.txt", Body=b"numbers " * 1000)
    consumer.start()
    try:
        deadline = time.monotonic() + 10
        ledger = Ledger(aws.dynamodb, TABLE)
        while time.monotonic() < deadline and not ledger.latest(BUCKET, "reports/q1 summary.txt"):
            time.sleep(0.05)
        latest = ledger.latest(BUCKET, "reports/q1 summary.txt")
    finally:
        consumer.stop(5)
    assert latest is not None and latest.size == 8000
    volume.verify_copy(latest.sha256, 8000)
    attrs = aws.sqs.get_queue_attributes(
        QueueUrl=config.queue.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attrs == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
