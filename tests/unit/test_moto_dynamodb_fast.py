"""The stand-in's DynamoDB changes (tests/support/moto_dynamodb_fast.py) keep moto's answers:
the same requests, with and without them, give the same answers and leave the same items.

The requests are the agent's own (Ledger.record and record_many: conditional Puts with
expression values, transactions that are cancelled), an UpdateItem, and the edges of what
changed: items just under and just over moto's 405,000-byte limit (AWS, "Constraints in
Amazon DynamoDB": 400 KB per item, the sum of the attribute names' and values' lengths, "DynamoDB
item sizes and formats"; moto sums the same and allows a little more), condition expressions
moto cannot lex, and the same expression with other names and values (the lexer's output is
kept per text)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from agent.events import EventKind, ObjectEvent
from agent.records import VersionRecord
from agent.storage.ledger import Ledger, table_definition
from tests.support import moto_dynamodb_fast
from tests.support.moto_dynamodb_fast import as_released

TABLE = "ledger"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def installed() -> Iterator[None]:
    was = moto_dynamodb_fast.installed()
    moto_dynamodb_fast.install()
    yield
    if not was:
        moto_dynamodb_fast.uninstall()


def stored(key: str, version: str, sequencer: str) -> VersionRecord:
    event = ObjectEvent(
        kind=EventKind.CREATED,
        bucket="docs",
        key=key,
        event_name="ObjectCreated:Put",
        event_time=T0 + timedelta(seconds=int(sequencer, 16)),
        version_id=version,
        etag="d41d8cd98f00b204e9800998ecf8427e",
        size=10,
        sequencer=sequencer,
    )
    return VersionRecord.for_event(
        event, backup_time=T0, volume_id="vol-a", sha256="ab" * 32, size=10, stored_size=9
    )


def _answer(call: Callable[[], Any]) -> Any:
    try:
        answer = call()
    except botocore.exceptions.ClientError as exc:
        return (
            exc.response["Error"]["Code"],
            exc.response["Error"].get("Message"),
            exc.response.get("CancellationReasons"),
            exc.response.get("Item"),
        )
    except ValueError as exc:  # moto in-process lets its lexer's error through
        return ("ValueError", str(exc), None, None)
    if isinstance(answer, dict):
        answer.pop("ResponseMetadata", None)
    return answer


def _item(pk: str, size: int) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": "V#1"}, "blob": {"S": "x" * size}}


def _requests(client: Any) -> list[Callable[[], Any]]:
    ledger = Ledger(client, TABLE)
    put = client.put_item
    just_under = 405_000 - len("pk") - len("big") - len("sk") - len("V#1") - len("blob")
    return [
        lambda: ledger.record_many([stored(f"k{n % 7}", f"v{n}", f"{n:04x}") for n in range(30)]),
        lambda: ledger.record_many([stored(f"k{n % 5}", f"v{n}", f"{n:04x}") for n in range(10)]),
        lambda: ledger.record(stored("k1", "v3", "0003")),  # a duplicate
        lambda: ledger.record(stored("k9", "vz", "00ff")),
        lambda: ledger.record(stored("k9", "vy", "0001")),  # out of order
        lambda: put(TableName=TABLE, Item=_item("big", just_under)),
        lambda: put(TableName=TABLE, Item=_item("bg2", just_under + 1)),
        lambda: put(TableName=TABLE, Item=_item("bg3", 500_000)),
        lambda: put(
            TableName=TABLE,
            Item=_item("cond", 10),
            ConditionExpression="attribute_not_exists(pk) OR #b < :v",
            ExpressionAttributeNames={"#b": "blob"},
            ExpressionAttributeValues={":v": {"S": "y"}},
        ),
        lambda: put(  # the same text, other values: the condition now fails
            TableName=TABLE,
            Item=_item("cond", 11),
            ConditionExpression="attribute_not_exists(pk) OR #b < :v",
            ExpressionAttributeNames={"#b": "blob"},
            ExpressionAttributeValues={":v": {"S": "a"}},
            ReturnValuesOnConditionCheckFailure="ALL_OLD",
        ),
        lambda: put(  # the same text, another name
            TableName=TABLE,
            Item=_item("cond", 12),
            ConditionExpression="attribute_not_exists(pk) OR #b < :v",
            ExpressionAttributeNames={"#b": "sk"},
            ExpressionAttributeValues={":v": {"S": "W"}},
        ),
        lambda: put(TableName=TABLE, Item=_item("bad", 1), ConditionExpression="pk ~~ 3"),
        lambda: put(TableName=TABLE, Item=_item("bad", 1), ConditionExpression="pk ~~ 3"),
        lambda: put(TableName=TABLE, Item=_item("bad", 1), ConditionExpression="size(pk) >"),
        lambda: client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": "big"}, "sk": {"S": "V#1"}},
            UpdateExpression="SET extra = :e",
            ExpressionAttributeValues={":e": {"S": "e" * 100}},
        ),
    ]


def _run() -> tuple[list[Any], list[Any]]:
    client = boto3.client("dynamodb", region_name="us-east-1")
    client.create_table(**table_definition(TABLE))
    answers = [_answer(request) for request in _requests(client)]
    items = sorted(
        client.scan(TableName=TABLE)["Items"], key=lambda i: (i["pk"]["S"], i["sk"]["S"])
    )
    return answers, items


def test_the_same_requests_give_the_same_answers_and_items_with_and_without_it():
    with mock_aws(), as_released():
        assert not moto_dynamodb_fast.installed()
        released = _run()
    with mock_aws():
        assert moto_dynamodb_fast.installed()
        fast = _run()

    assert fast == released
    answers, items = fast
    assert answers[6][0] == "ValidationException"  # one byte over moto's limit: refused
    assert answers[5] == {} and any(i["pk"]["S"] == "big" for i in items)
    assert answers[9][0] == "ConditionalCheckFailedException"
    assert answers[11][0] == "ValueError"  # moto cannot lex it, twice (in-process: raised)
    assert answers[12] == answers[11]


def test_a_lexed_expression_is_handed_out_as_fresh_nodes():
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        condition = "attribute_not_exists(pk) AND (pk <> :a OR pk = :b)"
        values = {":a": {"S": "p"}, ":b": {"S": "q"}}
        for n in range(3):  # the second and third parse take the kept lexing
            client.put_item(
                TableName=TABLE,
                Item=_item(f"p{n}", 1),
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
    assert condition in moto_dynamodb_fast._lexed
    nodes = moto_dynamodb_fast._lex_condition_expression(
        type("P", (), {"condition_expression": condition})()  # type: ignore[arg-type]
    )
    assert all(node.children == [] for node in nodes)
    assert nodes[0] is not moto_dynamodb_fast._lexed[condition][0]
