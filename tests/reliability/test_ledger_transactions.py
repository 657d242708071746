"""`Ledger.record_many` under AWS faults on TransactWriteItems (in-process moto, faults by
botocore hooks as in test_aws_faults.py): throttling, 500/503, timeouts, resets and lost
responses lose no record and duplicate none; after the faults, the items are those of
`record` called for each record in order.

A transaction is idempotent for 10 minutes under its ClientRequestToken (TransactWriteItems
API reference): botocore's own retries send the request again with the same token, so a
transaction that committed but whose response was lost is answered as a success and its
records stay fresh. moto 5.2.5 ignores the token and runs the repeat, which its own writes
cancel: the records then come back as already known (False) and the items are the same
(docs/testing.md). `dynamo_idempotency` below answers a repeated token as AWS does.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest
from botocore.awsrequest import AWSResponse

from agent.errors import RetryableError
from agent.records import VersionRecord
from agent.storage.ledger import Ledger
from tests.reliability.pipeline import (
    LOST_RESPONSE,
    RESET,
    SERVER_ERROR,
    THROTTLE,
    TIMEOUT,
    UNAVAILABLE,
    Faults,
)
from tests.support.aws import REGION
from tests.support.ledger_table import TABLE, ledger_table, stored_version

RETRIES = botocore.config.Config(retries={"mode": "standard", "max_attempts": 4})


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with ledger_table("oracle", config=RETRIES) as client:
        yield client


def stored(key: str, version_id: str, sequencer: str) -> VersionRecord:
    return stored_version(key, version_id, sequencer)


def items(dynamodb: Any, table: str) -> list[dict[str, Any]]:
    found = dynamodb.scan(TableName=table)["Items"]  # test-side inspection only
    return sorted(found, key=lambda i: (i["pk"]["S"], i["sk"]["S"]))


def tokens_sent(dynamodb: Any) -> list[str]:
    """The ClientRequestToken of every TransactWriteItems attempt (retries included)."""
    sent: list[str] = []

    def remember(request: Any, **_: Any) -> None:
        sent.append(json.loads(request.body)["ClientRequestToken"])

    dynamodb.meta.events.register_first("before-sign.dynamodb.TransactWriteItems", remember)
    return sent


def dynamo_idempotency(dynamodb: Any, *, lose_first_response: bool) -> list[str]:
    """Make TransactWriteItems behave as DynamoDB documents for a repeated token: the
    first request with a token is made (on moto, by a client without this hook); with
    `lose_first_response` its connection then drops (botocore retries it); a request
    with a token already committed is answered 200 without writing. Returns the tokens
    answered from that memory."""
    committed: set[str] = set()
    repeated: list[str] = []
    plain = boto3.client("dynamodb", region_name=REGION)

    def answer(request: Any, **_: Any) -> AWSResponse | None:
        body = json.loads(request.body)
        token = body["ClientRequestToken"]
        if token in committed:
            repeated.append(token)
            return AWSResponse(request.url, 200, {}, _Body(b"{}"))
        plain.transact_write_items(**body)  # raises a cancellation as it is
        committed.add(token)
        if lose_first_response:
            raise botocore.exceptions.ConnectionClosedError(endpoint_url=request.url)
        return AWSResponse(request.url, 200, {}, _Body(b"{}"))

    dynamodb.meta.events.register_first("before-send.dynamodb.TransactWriteItems", answer)
    return repeated


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def batch(count: int = 6) -> list[VersionRecord]:
    return [stored(f"reports/{n}.txt", "v1", "10") for n in range(count)]


def test_a_throttled_transaction_is_retried_by_botocore_with_the_same_token(dynamodb):
    faults = Faults().attach(dynamodb)
    faults.script("dynamodb.TransactWriteItems", THROTTLE, UNAVAILABLE)
    sent = tokens_sent(dynamodb)

    assert Ledger(dynamodb, TABLE).record_many(batch()) == [True] * 6

    assert faults.injected == {
        f"dynamodb.TransactWriteItems:{THROTTLE}": 1,
        f"dynamodb.TransactWriteItems:{UNAVAILABLE}": 1,
    }
    assert len(sent) == 3 and len(set(sent)) == 1


def test_a_committed_transaction_whose_response_was_lost_stays_fresh(dynamodb):
    """The case the token is for: on DynamoDB the repeat is answered as the first was."""
    repeated = dynamo_idempotency(dynamodb, lose_first_response=True)

    assert Ledger(dynamodb, TABLE).record_many(batch()) == [True] * 6

    assert len(repeated) == 1  # botocore's retry, answered from the token
    oracle = Ledger(dynamodb, "oracle")
    assert [oracle.record(r) for r in batch()] == [True] * 6
    assert items(dynamodb, TABLE) == items(dynamodb, "oracle")


def test_without_the_tokens_memory_a_lost_response_leaves_the_records_already_known(dynamodb):
    """moto's behaviour (no idempotency): the retry is cancelled by the transaction's own
    writes, every record goes through `record` and is found there. Nothing is lost or
    written twice; only the fresh/known answer differs from DynamoDB's."""
    faults = Faults().attach(dynamodb)
    faults.script("dynamodb.TransactWriteItems", LOST_RESPONSE)  # after botocore: no retry

    results = Ledger(dynamodb, TABLE).record_many(batch())
    assert all(isinstance(r, RetryableError) for r in results)  # the caller tries again

    assert Ledger(dynamodb, TABLE).record_many(batch()) == [False] * 6
    oracle = Ledger(dynamodb, "oracle")
    assert [oracle.record(r) for r in batch()] == [True] * 6
    assert items(dynamodb, TABLE) == items(dynamodb, "oracle")


def test_random_faults_on_transactions_and_puts_lose_and_duplicate_nothing(dynamodb):
    rng = random.Random(19)
    faults = Faults().attach(dynamodb)
    kinds = [THROTTLE, SERVER_ERROR, UNAVAILABLE, TIMEOUT, RESET]
    for operation in ("dynamodb.TransactWriteItems", "dynamodb.PutItem"):
        faults.randomly(operation, 0.3, kinds, rng)
    faults.script("dynamodb.TransactWriteItems", LOST_RESPONSE)
    versions = [(rng.randrange(8), rng.randrange(3)) for _ in range(40)]  # duplicates too
    records = [stored(f"reports/{k}.txt", f"v{v}", f"{v + 1}0") for k, v in versions]
    ledger = Ledger(dynamodb, TABLE)

    left = list(records)
    for _ in range(20):  # the caller retries what failed, as the pipeline redelivers
        results = ledger.record_many(left)
        left = [r for r, result in zip(left, results, strict=True) if isinstance(result, Exception)]
        if not left:
            break
    assert left == []

    faults.clear()
    oracle = Ledger(dynamodb, "oracle")
    for record in records:
        oracle.record(record)
    assert items(dynamodb, TABLE) == items(dynamodb, "oracle")
    assert faults.injected[f"dynamodb.TransactWriteItems:{LOST_RESPONSE}"] == 1
    assert sum(n for k, n in faults.injected.items() if k.startswith("dynamodb.Transact")) > 1
