"""The local AWS stand-in's TransactWriteItems change (tests/support/moto_server.py) keeps
moto's answers: the same transactions, with and without it, leave the same items and
raise the same cancellations; and it undoes only what the transaction touched."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from moto import mock_aws

from agent.storage.ledger import table_definition
from tests.support.moto_server import as_released, touched_items_only

TABLE = "ledger"


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        yield client


def _put(pk: str, sk: str, value: str, condition: str | None = None) -> dict[str, Any]:
    put: dict[str, Any] = {
        "TableName": TABLE,
        "Item": {"pk": {"S": pk}, "sk": {"S": sk}, "value": {"S": value}},
        "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    }
    if condition:
        put["ConditionExpression"] = condition
    return {"Put": put}


def _transactions(seed: int) -> list[list[dict[str, Any]]]:
    """Random transactions over a few keys: some succeed, some are cancelled by a
    condition after earlier actions wrote, some name one item twice."""
    rng = random.Random(seed)
    made = []
    for n in range(40):
        actions = []
        for _ in range(rng.randint(1, 6)):
            pk, sk = f"k{rng.randrange(4)}", f"s{rng.randrange(3)}"
            kind = rng.random()
            if kind < 0.5:
                actions.append(_put(pk, sk, f"v{n}", "attribute_not_exists(pk)"))
            elif kind < 0.8:
                actions.append(_put(pk, sk, f"v{n}"))
            else:
                key = {"pk": {"S": pk}, "sk": {"S": sk}}
                actions.append({"Delete": {"TableName": TABLE, "Key": key}})
        made.append(actions)
    return made


def _run(client: Any, transactions: list[list[dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    answers: list[Any] = []
    for actions in transactions:
        try:
            client.transact_write_items(TransactItems=actions)
            answers.append("ok")
        except botocore.exceptions.ClientError as exc:
            answers.append((exc.response["Error"]["Code"], exc.response.get("CancellationReasons")))
    items = sorted(
        client.scan(TableName=TABLE)["Items"], key=lambda i: (i["pk"]["S"], i["sk"]["S"])
    )
    return answers, items


@pytest.mark.parametrize("seed", range(5))
def test_the_same_transactions_leave_the_same_items_with_and_without_it(seed):
    transactions = _transactions(seed)
    with mock_aws(), as_released():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        plain = _run(client, transactions)
    with mock_aws(), touched_items_only():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        changed = _run(client, transactions)
    assert changed == plain
    cancelled = [a for a in plain[0] if a != "ok"]
    assert cancelled and len(cancelled) < len(transactions)  # both kinds were exercised


def test_a_cancelled_transaction_undoes_its_earlier_writes_and_nothing_else(dynamodb):
    # moto's own undo is off while the change is installed: only `_undo` puts items back
    dynamodb.put_item(TableName=TABLE, Item=_put("a", "1", "old")["Put"]["Item"])
    dynamodb.put_item(TableName=TABLE, Item=_put("other", "1", "kept")["Put"]["Item"])
    with touched_items_only(), pytest.raises(botocore.exceptions.ClientError) as raised:
        dynamodb.transact_write_items(
            TransactItems=[
                _put("new", "1", "written first"),
                _put("a", "1", "overwritten"),
                _put("a", "2", "refused", "attribute_exists(pk)"),
            ]
        )
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    items = {
        (i["pk"]["S"], i["sk"]["S"]): i["value"]["S"]
        for i in dynamodb.scan(TableName=TABLE)["Items"]
    }
    assert items == {("a", "1"): "old", ("other", "1"): "kept"}


def test_it_is_taken_out_again():
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend

    with as_released():
        before = (DynamoDBBackend.transact_write_items, models.copy)
        with touched_items_only():
            assert (DynamoDBBackend.transact_write_items, models.copy) != before
        assert (DynamoDBBackend.transact_write_items, models.copy) == before
