"""DeleteBatcher: finished messages are deleted in batches of up to ten, promptly."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.aws import lost_handle
from agent.pipeline.deletes import DeleteBatcher
from tests.support.aws import QUEUE_URL, count_sqs_calls, queue_counts


def _send_and_receive(aws, count: int) -> list[dict[str, Any]]:
    for start in range(0, count, 10):
        aws.sqs.send_message_batch(
            QueueUrl=QUEUE_URL,
            Entries=[
                {"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, min(count, start + 10))
            ],
        )
    received: list[dict[str, Any]] = []
    while len(received) < count:
        received += aws.sqs.receive_message(
            QueueUrl=QUEUE_URL, MaxNumberOfMessages=10, VisibilityTimeout=300
        ).get("Messages", [])
    return received


@pytest.fixture
def calls(aws) -> Counter[str]:
    return count_sqs_calls(aws.sqs)


def test_finished_messages_are_deleted_ten_at_a_time(aws, calls):
    messages = _send_and_receive(aws, 25)
    batcher = DeleteBatcher(aws.sqs, QUEUE_URL, max_delay=60)  # only full batches go on their own

    for message in messages:
        batcher.add(message["MessageId"], message["ReceiptHandle"])
    deadline = time.monotonic() + 10
    while batcher.pending() > 5 and time.monotonic() < deadline:
        time.sleep(0.01)

    assert batcher.pending() == 5  # the last, partial batch waits for max_delay or a flush
    assert calls["DeleteMessageBatch"] == 2
    batcher.close()
    assert calls["DeleteMessageBatch"] == 3
    assert calls["DeleteMessage"] == 0
    assert queue_counts(aws.sqs) == (0, 0)


def test_a_partial_batch_is_sent_after_max_delay(aws):
    [message] = _send_and_receive(aws, 1)
    batcher = DeleteBatcher(aws.sqs, QUEUE_URL, max_delay=0.01)

    batcher.add(message["MessageId"], message["ReceiptHandle"])
    deadline = time.monotonic() + 10
    while queue_counts(aws.sqs) != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)

    assert queue_counts(aws.sqs) == (0, 0)
    batcher.close()


def test_flush_sends_everything_added_so_far(aws):
    messages = _send_and_receive(aws, 3)
    batcher = DeleteBatcher(aws.sqs, QUEUE_URL, max_delay=60)
    for message in messages:
        batcher.add(message["MessageId"], message["ReceiptHandle"])

    assert batcher.flush(timeout=10)
    assert queue_counts(aws.sqs) == (0, 0)
    batcher.close()


def test_nothing_is_deleted_until_it_is_added(aws):
    messages = _send_and_receive(aws, 2)
    batcher = DeleteBatcher(aws.sqs, QUEUE_URL, max_delay=0)

    batcher.add(messages[0]["MessageId"], messages[0]["ReceiptHandle"])
    assert batcher.flush(timeout=10)

    assert queue_counts(aws.sqs) == (0, 1)  # the unfinished message stays in flight
    batcher.close()


def test_a_failed_delete_is_logged_and_the_rest_still_go(aws):
    messages = _send_and_receive(aws, 2)
    batcher = DeleteBatcher(aws.sqs, QUEUE_URL, max_delay=60)
    bogus = "not-a-receipt-handle"

    with capture_logs() as logs:
        batcher.add("gone", bogus)
        for message in messages:
            batcher.add(message["MessageId"], message["ReceiptHandle"])
        batcher.close()

    failed = [e for e in logs if e["event"] == "message.delete_failed"]
    assert [e["message_id"] for e in failed] == ["gone"]
    assert failed[0]["code"] == "ReceiptHandleIsInvalid" and failed[0]["lost_handle"] is True
    assert queue_counts(aws.sqs) == (0, 0)


@pytest.mark.parametrize(
    ("code", "lost"),
    [
        ("AWS.SimpleQueueService.MessageNotInflight", True),  # the JSON protocol's name
        ("MessageNotInflight", True),
        ("ReceiptHandleIsInvalid", True),
        ("InvalidParameterValue", True),
        ("AWS.SimpleQueueService.NonExistentQueue", False),
        ("RequestThrottled", False),
    ],
)
def test_which_codes_mean_the_receipt_handle_is_no_longer_valid(code, lost):
    assert lost_handle(code) is lost


def test_after_close_a_delete_is_sent_at_once(aws, calls):
    [message] = _send_and_receive(aws, 1)
    batcher = DeleteBatcher(aws.sqs, QUEUE_URL, max_delay=60)
    batcher.close()

    batcher.add(message["MessageId"], message["ReceiptHandle"])

    assert calls["DeleteMessageBatch"] == 1
    assert queue_counts(aws.sqs) == (0, 0)


class _BrokenOnce:
    """An SQS client whose first DeleteMessageBatch fails with a non-AWS error."""

    def __init__(self, sqs: Any) -> None:
        self.sqs = sqs
        self.failed = False

    def delete_message_batch(self, **kwargs: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug, not an AWS error")
        return self.sqs.delete_message_batch(**kwargs)


def test_an_unexpected_error_in_one_batch_does_not_stop_the_batcher(aws):
    first, second = _send_and_receive(aws, 2)
    batcher = DeleteBatcher(_BrokenOnce(aws.sqs), QUEUE_URL, max_delay=0)

    with capture_logs() as logs:
        batcher.add(first["MessageId"], first["ReceiptHandle"])
        assert batcher.flush(timeout=5)
        batcher.add(second["MessageId"], second["ReceiptHandle"])
        assert batcher.flush(timeout=5)
    batcher.close()

    assert [e["event"] for e in logs] == ["message.delete_batch_crashed"]
    assert queue_counts(aws.sqs) == (0, 1)  # the first is left to redelivery, the second deleted
