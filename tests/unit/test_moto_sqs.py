"""The stand-in's ReceiveMessage takes a message once and its DeleteMessage is whole
(tests/support/moto_sqs.py).

Two receives are made to find the same message visible at the same moment: each, having
found it visible and before marking it received, waits (a bounded look, at most 1 s) for the
other to get there too. On moto as released both then take the message (the race: a
message delivered twice within its visibility timeout, which real SQS does only rarely);
with the stand-in's patch the second receive cannot look until the first has taken it, so
one gets it.

Two deletes are made to overlap: the first, having built the queue's list without its
message, waits for the second to finish before it assigns the list (with the patch the
second cannot start: the first gives up after 0.5 s). On moto as
released the second's message comes back (in flight, delivered again after its visibility
timeout); with the patch the second delete waits for the first, and both messages are gone.

A message's visibility timeout is made to end between the queue's count of visible messages
and its count of messages in flight: on moto as released the message is in neither count (the
queue looks empty); with the patch each message is looked at once and counted once.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws
from moto.sqs.models import Message, Queue

from tests.support import moto_sqs
from tests.support.aws import queue_counts


@pytest.fixture
def queue() -> Iterator[tuple[Any, str]]:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="race", Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="once")
        yield sqs, url


def _receive_together(
    sqs: Any, url: str, monkeypatch: pytest.MonkeyPatch, wait_seconds: int
) -> list[str]:
    together = threading.Barrier(2, timeout=1.0)
    real_mark = Message.mark_received

    def mark_received(message: Message, visibility_timeout: int | None = None) -> None:
        # found visible, about to be marked received: wait for the other receive to get here
        with contextlib.suppress(threading.BrokenBarrierError):  # the patch holds the other
            together.wait()
        real_mark(message, visibility_timeout)

    monkeypatch.setattr(Message, "mark_received", mark_received)
    got: list[str] = []
    lock = threading.Lock()

    def receive() -> None:
        answer = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=wait_seconds)
        with lock:
            got.extend(m["Body"] for m in answer.get("Messages", []))

    threads = [threading.Thread(target=receive) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return got


def test_moto_as_released_delivers_one_message_to_two_receives_at_once(queue, monkeypatch):
    sqs, url = queue
    with moto_sqs.as_released():
        assert _receive_together(sqs, url, monkeypatch, wait_seconds=0) == ["once", "once"]


@pytest.mark.parametrize("wait_seconds", [0, 1])
def test_with_the_stand_in_one_receive_takes_the_message(queue, monkeypatch, wait_seconds):
    """With a long poll too: the receive that finds nothing waits with the lock let go (it
    would otherwise hold the other for its whole poll)."""
    sqs, url = queue
    moto_sqs.install()
    assert moto_sqs.installed()
    assert _receive_together(sqs, url, monkeypatch, wait_seconds=wait_seconds) == ["once"]


def test_a_long_poll_lets_other_receives_in(queue):
    """A receive waiting on an empty queue does not hold the others up."""
    sqs, url = queue
    moto_sqs.install()
    empty = sqs.create_queue(QueueName="empty")["QueueUrl"]
    polling = threading.Thread(
        target=lambda: sqs.receive_message(QueueUrl=empty, WaitTimeSeconds=3)
    )
    polling.start()
    answer = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert [m["Body"] for m in answer["Messages"]] == ["once"]
    assert polling.is_alive()  # still polling: the answer above did not wait for it
    polling.join(10)


def _delete_overlapping(
    sqs: Any, url: str, monkeypatch: pytest.MonkeyPatch, wait: float
) -> tuple[int, int]:
    """Two received messages deleted by two threads, the second delete run whole while the
    first is between building the queue's list and assigning it (the first waits `wait`
    seconds at most for it); (visible, in flight) after."""
    sqs.send_message(QueueUrl=url, MessageBody="twice")
    received = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=2)["Messages"]
    handles = {m["Body"]: m["ReceiptHandle"] for m in received}
    assert set(handles) == {"once", "twice"}
    first_paused, second_done = threading.Event(), threading.Event()
    real_had = Message.had_receipt_handle

    def had_receipt_handle(message: Message, receipt_handle: str) -> bool:
        # the first delete's check of "once" finds it at once; its look at "twice" comes
        # only in the loop that builds the new list, just before it is assigned
        if receipt_handle == handles["once"] and message.body == "twice":
            first_paused.set()
            second_done.wait(wait)  # the patch holds the second delete until this one ends
        return real_had(message, receipt_handle)

    monkeypatch.setattr(Message, "had_receipt_handle", had_receipt_handle)

    failed: list[BaseException] = []

    def delete(body: str) -> None:
        try:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=handles[body])
        except BaseException as exc:  # seen by the test, not lost in the thread
            failed.append(exc)
        if body == "twice":
            second_done.set()

    first = threading.Thread(target=delete, args=("once",))
    first.start()
    assert first_paused.wait(10)
    other = threading.Thread(target=delete, args=("twice",))
    other.start()
    for thread in (first, other):
        thread.join(30)
    assert not first.is_alive() and not other.is_alive() and failed == []
    return queue_counts(sqs, url)


def test_moto_as_released_brings_back_a_message_deleted_beside_another(queue, monkeypatch):
    sqs, url = queue
    with moto_sqs.as_released():  # the second delete ends at once: the wait is not paid
        assert _delete_overlapping(sqs, url, monkeypatch, wait=30) == (0, 1)


def test_with_the_stand_in_two_deletes_at_once_delete_both(queue, monkeypatch):
    sqs, url = queue
    moto_sqs.install()
    assert moto_sqs.installed()
    assert _delete_overlapping(sqs, url, monkeypatch, wait=0.5) == (0, 0)


def _counts_across_a_timeout_ending(
    sqs: Any, url: str, monkeypatch: pytest.MonkeyPatch, names: list[str]
) -> tuple[int, int]:
    """(visible, in flight) read while the one message's visibility timeout ends just after
    moto's first count of the visible messages."""
    sqs.receive_message(QueueUrl=url, VisibilityTimeout=60)  # in flight for a minute
    real_count = Queue.approximate_number_of_messages
    ended = threading.Event()

    def count_visible(queue: Queue) -> int:
        count: int = real_count.fget(queue)  # type: ignore[attr-defined]
        if not ended.is_set():
            ended.set()
            for message in queue._messages:
                message.visible_at = 0  # its timeout is over: visible again from now
        return count

    monkeypatch.setattr(Queue, "approximate_number_of_messages", property(count_visible))
    answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    assert ended.is_set()
    return (
        int(answer["ApproximateNumberOfMessages"]),
        int(answer["ApproximateNumberOfMessagesNotVisible"]),
    )


def test_moto_as_released_counts_a_message_turning_visible_in_neither_count(queue, monkeypatch):
    sqs, url = queue
    with moto_sqs.as_released():
        assert _counts_across_a_timeout_ending(sqs, url, monkeypatch, ["All"]) == (0, 0)


def _counts_of_a_flickering_message(
    sqs: Any, url: str, monkeypatch: pytest.MonkeyPatch, names: list[str]
) -> tuple[int, int]:
    """(visible, in flight) of a queue whose one message is invisible, visible, invisible ...
    at each look: a count that looks at a message twice counts it twice or not at all."""
    looks = itertools.count()
    monkeypatch.setattr(Message, "visible", property(lambda _message: next(looks) % 2 == 1))
    answer = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return (
        int(answer["ApproximateNumberOfMessages"]),
        int(answer["ApproximateNumberOfMessagesNotVisible"]),
    )


NAMES = [["All"], ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]]


@pytest.mark.parametrize("names", NAMES)
def test_with_the_stand_in_a_message_turning_visible_is_counted_once(queue, monkeypatch, names):
    sqs, url = queue
    moto_sqs.install()
    assert _counts_across_a_timeout_ending(sqs, url, monkeypatch, names) == (1, 0)


@pytest.mark.parametrize("names", NAMES)
def test_with_the_stand_in_each_message_is_looked_at_once_for_its_counts(queue, monkeypatch, names):
    sqs, url = queue
    moto_sqs.install()
    assert sum(_counts_of_a_flickering_message(sqs, url, monkeypatch, names)) == 1


def test_moto_as_released_looks_at_a_message_twice_for_its_counts(queue, monkeypatch):
    sqs, url = queue
    with moto_sqs.as_released():
        assert sum(_counts_of_a_flickering_message(sqs, url, monkeypatch, ["All"])) != 1
