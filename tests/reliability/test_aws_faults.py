"""AWS faults (throttling, 500/503, timeouts, dropped connections, truncated bodies, lost
responses) injected with botocore event hooks into the clients the consumer and the backup
service use, against in-process moto. Nothing is lost, nothing duplicated, the pipeline keeps
working afterwards.
"""

from __future__ import annotations

import os
import random

from structlog.testing import capture_logs

from tests.reliability.pipeline import (
    LOST_RESPONSE,
    RESET,
    SERVER_ERROR,
    THROTTLE,
    TIMEOUT,
    TRUNCATE,
    UNAVAILABLE,
    Faults,
    assert_backed_up_once,
)
from tests.support.aws import BUCKET

ALL_KINDS = [THROTTLE, SERVER_ERROR, UNAVAILABLE, TIMEOUT, RESET]
FAULTED_OPERATIONS = [
    "s3.GetObject",
    "sqs.ReceiveMessage",
    "sqs.DeleteMessageBatch",
    "sqs.ChangeMessageVisibility",
    "dynamodb.PutItem",
    "dynamodb.GetItem",
    "dynamodb.TransactWriteItems",  # Ledger.record_many; test_ledger_transactions.py too
]


def _upload(pipeline, objects: dict[str, bytes]) -> None:
    for key, body in objects.items():
        pipeline.clients.s3.put_object(Bucket=BUCKET, Key=key, Body=body)


def _all_recorded(pipeline, keys) -> bool:
    return pipeline.drained() and all(pipeline.ledger.latest(BUCKET, k) for k in keys)


def test_random_faults_on_s3_sqs_and_dynamodb_lose_and_duplicate_nothing(make_pipeline):
    pipeline = make_pipeline(aws={"retry_mode": "adaptive"})
    rng = random.Random(8)
    faults = Faults().attach(*_agent_clients(pipeline))
    for operation in FAULTED_OPERATIONS:
        faults.randomly(operation, 0.25, ALL_KINDS, rng)
    # and one for sure on each service: 16 GETs at 25 % leave S3 without a fault once in ~100
    for operation in ("s3.GetObject", "sqs.ReceiveMessage", "dynamodb.PutItem"):
        faults.script(operation, rng.choice(ALL_KINDS))
    faults.script("dynamodb.TransactWriteItems", THROTTLE)  # when the pipeline batches (rng kept)
    shared = os.urandom(3000)
    objects = {f"faults/{i:02d}.bin": os.urandom(rng.randrange(1, 200_000)) for i in range(12)}
    objects.update({f"faults/same-{i}.bin": shared for i in range(4)})
    _upload(pipeline, objects)

    pipeline.run_until(lambda: _all_recorded(pipeline, objects), timeout=90)

    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, objects)
    services = {name.split(".")[0] for name in faults.injected}
    assert services == {"s3", "sqs", "dynamodb"}, faults.injected
    faults.clear()
    after = {"faults/after.txt": b"the agent is still healthy"}
    _upload(pipeline, after)
    pipeline.run_until(lambda: _all_recorded(pipeline, after), timeout=20)
    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, {**objects, **after})


def test_a_burst_that_exhausts_botocore_retries_releases_the_message_for_later(pipeline):
    faults = Faults().attach(*_agent_clients(pipeline))
    # botocore's retries.max_attempts counts retries: 3 means four attempts in all.
    faults.script("s3.GetObject", UNAVAILABLE, THROTTLE, SERVER_ERROR, TIMEOUT)
    objects = {"burst/report.csv": b"a,b,c\n" * 1000}
    _upload(pipeline, objects)

    with capture_logs() as logs:
        pipeline.run_until(lambda: _all_recorded(pipeline, objects))

    failed = [e for e in logs if e["event"] == "backup.failed"]
    assert len(failed) == 1 and failed[0]["retryable"] is True
    assert faults.calls["s3.GetObject"] == 5  # four faulted attempts, then the redelivery
    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, objects)


def test_timeouts_and_resets_on_every_call_type_are_retried(pipeline):
    faults = Faults().attach(*_agent_clients(pipeline))
    for operation in FAULTED_OPERATIONS:
        faults.script(operation, TIMEOUT, RESET)
    objects = {f"net/{i}.bin": os.urandom(50_000) for i in range(3)}
    _upload(pipeline, objects)

    pipeline.run_until(lambda: _all_recorded(pipeline, objects))

    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, objects)
    for operation in (
        "s3.GetObject",
        "sqs.ReceiveMessage",
        "sqs.DeleteMessageBatch",
        "dynamodb.PutItem",
    ):
        assert faults.injected[f"{operation}:{TIMEOUT}"] == 1, operation
        assert faults.injected[f"{operation}:{RESET}"] == 1, operation


def test_a_body_cut_off_half_way_leaves_no_copy_and_is_retried(pipeline):
    faults = Faults().attach(*_agent_clients(pipeline))
    faults.script("s3.GetObject", TRUNCATE)
    objects = {"cut/large.bin": os.urandom(3 << 20)}
    _upload(pipeline, objects)

    with capture_logs() as logs:
        pipeline.run_until(lambda: _all_recorded(pipeline, objects))

    failed = [e for e in logs if e["event"] == "backup.failed"]
    assert len(failed) == 1 and failed[0]["retryable"] is True
    assert faults.injected[f"s3.GetObject:{TRUNCATE}"] == 1
    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, objects)


def test_responses_lost_after_the_work_was_done_cause_no_duplicates(pipeline):
    faults = Faults().attach(*_agent_clients(pipeline))
    faults.script("dynamodb.PutItem", LOST_RESPONSE)
    faults.script("sqs.DeleteMessageBatch", LOST_RESPONSE)
    objects = {f"lost/{i}.txt": f"object {i}\n".encode() * 200 for i in range(4)}
    _upload(pipeline, objects)

    with capture_logs() as logs:
        pipeline.run_until(lambda: _all_recorded(pipeline, objects))

    names = [e["event"] for e in logs]
    assert "message.delete_failed" in names
    # The PutItem that "failed" had written: the retry finds the version and adds nothing.
    assert names.count("backup.failed") == 1
    assert names.count("backup.duplicate") == 1
    assert names.count("backup.stored") == len(objects) - 1
    assert_backed_up_once(pipeline.ledger, pipeline.volume, BUCKET, objects)
    journal_keys = [r.key for r in pipeline.journal()]
    assert sorted(set(journal_keys)) == sorted(objects)


def _agent_clients(pipeline):
    clients = pipeline.agent_clients
    return clients.s3, clients.sqs, clients.dynamodb
