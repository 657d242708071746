"""Delivery: SQS is at-least-once and unordered. Duplicates, reordering, batches that
half-succeed and poison messages must neither lose nor double a backup, nor stall the queue.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
from structlog.testing import capture_logs

from tests.e2e.conftest import make_stack
from tests.reliability.pipeline import (
    UNAVAILABLE,
    Faults,
    assert_backed_up_once,
    notification,
    s3_record,
    wait_until,
)
from tests.support.aws import BUCKET


def _put(pipeline, key: str, body: bytes) -> dict:
    response = pipeline.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    return {"etag": response["ETag"].strip('"'), "version_id": response.get("VersionId")}


def _versioned(pipeline) -> None:
    pipeline.clients.s3.put_bucket_versioning(
        Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"}
    )


def _purge_moto_events(pipeline) -> None:
    """moto's own events lack versionId/sequencer; these tests send real-S3-shaped ones."""
    sqs = pipeline.clients.sqs
    while messages := sqs.receive_message(
        QueueUrl=pipeline.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages"):
        for message in messages:
            sqs.delete_message(QueueUrl=pipeline.queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_the_same_event_delivered_five_times_is_backed_up_once(pipeline):
    body = os.urandom(100_000)
    put = _put(pipeline, "dup/report.pdf", body)
    _purge_moto_events(pipeline)
    record = s3_record(
        BUCKET, "dup/report.pdf", size=len(body), etag=put["etag"], sequencer="0055AED6DCD90281E5"
    )
    for _ in range(5):
        pipeline.send(notification(record))

    with capture_logs() as logs:
        pipeline.run_until(pipeline.drained)

    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, {"dup/report.pdf": body})
    assert len(pipeline.journal()) == 1
    outcomes = [e["event"] for e in logs if e["event"].startswith("backup.")]
    assert outcomes.count("backup.stored") == 1
    assert outcomes.count("backup.duplicate") == 4


def test_a_keys_events_in_reverse_sequencer_order_leave_latest_at_the_newest(pipeline):
    _versioned(pipeline)
    bodies = [f"version {i}\n".encode() * (100 + i) for i in range(4)]
    puts = [_put(pipeline, "ledger.xlsx", body) for body in bodies]
    _purge_moto_events(pipeline)
    sequencers = ["0055AED6DCD9028100", "0055AED6DCD9028101", "0055AED6DCD90281A0", "0055AED6DCD9F"]
    records = [
        s3_record(
            BUCKET,
            "ledger.xlsx",
            size=len(body),
            etag=put["etag"],
            version_id=put["version_id"],
            sequencer=sequencer,
        )
        for body, put, sequencer in zip(bodies, puts, sequencers, strict=True)
    ]
    for record in reversed(records):  # newest first
        pipeline.send(notification(record))
    pipeline.start()
    wait_until(pipeline.drained)

    versions = pipeline.ledger.versions(BUCKET, "ledger.xlsx")
    assert [v.version_id for v in versions] == [p["version_id"] for p in puts]
    latest = pipeline.ledger.latest(BUCKET, "ledger.xlsx")
    assert latest is not None
    assert latest.version_id == puts[-1]["version_id"]
    assert latest.sha256 == hashlib.sha256(bodies[-1]).hexdigest()


def test_a_delete_delivered_before_the_create_it_follows_stays_latest(pipeline):
    _versioned(pipeline)
    put = _put(pipeline, "gone-later.txt", b"short-lived")
    _purge_moto_events(pipeline)
    create = s3_record(
        BUCKET,
        "gone-later.txt",
        size=11,
        etag=put["etag"],
        version_id=put["version_id"],
        sequencer="00AA01",
    )
    delete = s3_record(
        BUCKET,
        "gone-later.txt",
        name="ObjectRemoved:DeleteMarkerCreated",
        version_id="marker-1",
        sequencer="00AA02",
    )
    pipeline.send(notification(delete))
    pipeline.send(notification(create))
    pipeline.run_until(pipeline.drained)

    latest = pipeline.ledger.latest(BUCKET, "gone-later.txt")
    assert latest is not None and latest.deleted
    assert len(pipeline.ledger.versions(BUCKET, "gone-later.txt")) == 2


def test_a_batch_whose_second_record_fails_is_retried_without_redoing_the_first(pipeline):
    first, second = os.urandom(20_000), os.urandom(30_000)
    put_a = _put(pipeline, "batch/a.bin", first)
    put_b = _put(pipeline, "batch/b.bin", second)
    _purge_moto_events(pipeline)
    faults = Faults().attach(pipeline.agent_clients.s3)
    pipeline.send(
        notification(
            s3_record(BUCKET, "batch/a.bin", size=len(first), etag=put_a["etag"]),
            s3_record(BUCKET, "batch/b.bin", size=len(second), etag=put_b["etag"]),
        )
    )
    # The first record's GetObject succeeds; the second's first delivery fails all four
    # attempts (botocore's max_attempts 3 counts retries).
    original = pipeline.service.process
    armed = []

    def fail_second_once(event):
        if event.key == "batch/b.bin" and not armed:
            armed.append(True)
            faults.script("s3.GetObject", *[UNAVAILABLE] * 4)
        return original(event)

    pipeline.consumer.process = fail_second_once

    with capture_logs() as logs:
        pipeline.run_until(
            lambda: pipeline.drained() and pipeline.ledger.latest(BUCKET, "batch/b.bin")
        )

    expected = {"batch/a.bin": first, "batch/b.bin": second}
    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, expected)
    events = [(e["event"], e.get("key")) for e in logs if e["event"].startswith("backup.")]
    assert events.count(("backup.stored", "batch/a.bin")) == 1
    assert events.count(("backup.duplicate", "batch/a.bin")) == 1  # the redelivery
    assert events.count(("backup.failed", "batch/b.bin")) == 1
    assert events.count(("backup.stored", "batch/b.bin")) == 1


def test_poison_messages_reach_the_dead_letter_queue_while_good_ones_flow(make_pipeline):
    pipeline = make_pipeline(queue={"max_receive_count": 3})
    poison = [
        "{not json",
        "",
        json.dumps([1, 2, 3]),
        json.dumps({"Records": "nope"}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": []}]}),
        json.dumps({"Type": "Notification", "Message": "<html>"}),
        json.dumps({"Records": [{"padding": "x" * 250_000}]}),  # ~250 KB, just under SQS's cap
        "[" * 100_000 + "]" * 100_000,  # nested past the JSON parser's recursion limit
    ]
    for body in poison:
        pipeline.send(body or " ")
    good = {f"flow/{i}.txt": f"good {i}".encode() * 50 for i in range(6)}

    with capture_logs() as logs:
        pipeline.start()
        for key, body in good.items():
            _put(pipeline, key, body)
        wait_until(lambda: pipeline.depth(pipeline.dlq_url)[0] == len(poison), timeout=30)
        wait_until(pipeline.drained)

    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, good)
    dead = pipeline.clients.sqs.receive_message(
        QueueUrl=pipeline.dlq_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    )["Messages"]
    assert sorted(m["Body"] for m in dead) == sorted(b or " " for b in poison)
    malformed = [e for e in logs if e["event"] == "message.malformed"]
    assert len(malformed) >= len(poison) * 3  # each seen max_receive_count times
    assert all(len(e["reason"]) < 2000 for e in malformed)  # the huge body is not logged whole
    assert "message.handler_crashed" not in [e["event"] for e in logs]


@pytest.mark.e2e
def test_the_real_agent_redrives_poison_to_the_dead_letter_queue(tmp_path, moto_server):
    stack = make_stack(tmp_path, moto_server, queue={"max_receive_count": 3})
    dlq = stack.clients.sqs.get_queue_url(QueueName="backup-events-dlq")["QueueUrl"]
    poison = ["{not json", json.dumps({"Records": [{"bogus": 1}]}), "x" * 250_000]
    for body in poison:
        stack.clients.sqs.send_message(QueueUrl=stack.config.queue.url, MessageBody=body)
    agent = stack.start_agent()
    try:
        agent.wait_for("agent.started", timeout=30)
        stack.clients.s3.put_object(Bucket=BUCKET, Key="e2e/good.txt", Body=b"flows")
        wait_until(lambda: stack.queue_depth(dlq)[0] == len(poison), timeout=60, every=0.2)
        agent.wait_for("backup.stored", timeout=30)
        wait_until(lambda: stack.queue_depth() == (0, 0), timeout=30, every=0.2)
        assert agent.process.poll() is None
    finally:
        assert agent.stop(timeout=30) == 0
    assert len(agent.log_events_named("message.malformed")) >= 3 * len(poison)
