"""The local AWS stand-in's TransactWriteItems change (tests/support/moto_server.py) keeps
moto's answers: the same transactions, with and without it, leave the same items and
raise the same cancellations; and it undoes only what the transaction touched."""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from moto import mock_aws
from moto.dynamodb.models.dynamo_type import DynamoType, Item, LimitedSizeDict

from agent.storage.ledger import KEY_INDEX, table_definition
from tests.support import moto_dynamodb_fast, moto_dynamodb_writes, moto_server, moto_sqs
from tests.support.moto_server import as_released, changed, touched_items_only

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
    from moto.core.serialize import BaseJSONSerializer
    from moto.dynamodb import models, responses
    from moto.dynamodb.models import DynamoDBBackend, table
    from moto.dynamodb.models.dynamo_type import Item
    from moto.dynamodb.models.table import Table

    def state() -> tuple[Any, ...]:
        return (
            DynamoDBBackend.transact_write_items,
            DynamoDBBackend.put_item,
            DynamoDBBackend.query,
            models.copy,
            Table.query,
            Table.all_items,
            BaseJSONSerializer._serialize_type_structure,
            Table.scan,
            Item.size,
            BaseJSONSerializer._serialize_type_map,
            table.copy,
            responses.dynamo_to_dict,
        )

    with as_released():
        before = state()
        with changed():
            assert [a == b for a, b in zip(state(), before, strict=True)] == [
                False,  # transact_write_items: the undo, and counted as a write
                False,  # put_item: counted as a write
                True,  # query: a read
                False,
                False,
                False,
                False,
                False,
                False,
                False,
                False,
                False,
            ]
        assert state() == before


# -- Query: the queried partition instead of the whole table ----------------------------------
#
# What the DynamoDB Developer Guide says a Query answers (Query.KeyConditionExpressions,
# Query.Other, Query.FilterExpression, Query.Pagination, bp-indexes-general-sparse-indexes):
# the items of one partition-key value, in sort-key order (descending with
# ScanIndexForward=false); at most Limit items read, and at most 1 MB, both before the filter
# expression; ScannedCount before the filter, Count after it; LastEvaluatedKey where a page
# stopped, to be given back as ExclusiveStartKey; an index holds only the items that have its
# key attributes (sparse). The change must answer every such Query as moto does without it:
# the random test below runs the same writes and Queries on two tables of one moto, one with
# moto as released and one with the change, and compares every page.

_tables = itertools.count()
HASHES = {"S": ["a", "b", "ab"], "N": ["1", "2", "10", "1.0"]}  # 1 and 1.0: one number
RANGES = {"S": ["a", "aa", "b", "ba", "c", "d"], "N": ["-3", "0", "1", "2.5", "7", "30"]}
PADS = [0, 10, 300_000]  # 300 kB: four items pass the 1 MB page


@st.composite
def _schemas(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "hash": draw(st.sampled_from("SN")),
        "range": draw(st.sampled_from(["S", "N", None])),
        "g": draw(st.sampled_from("SN")),  # gsi_hr: g (HASH), r (RANGE)
        "r": draw(st.sampled_from("SN")),
        "g2": draw(st.sampled_from("SN")),  # gsi_h: g2 (HASH) only
        "l": draw(st.sampled_from("SN")),  # lsi: the table's hash, l (RANGE); range tables only
    }


def _create(client: Any, schema: dict[str, Any]) -> str:
    name = f"query-{next(_tables)}"
    attrs = {"h": schema["hash"], "g": schema["g"], "r": schema["r"], "g2": schema["g2"]}
    keys = [{"AttributeName": "h", "KeyType": "HASH"}]
    extra: dict[str, Any] = {}
    if schema["range"]:
        attrs["s"] = schema["range"]
        attrs["l"] = schema["l"]
        keys.append({"AttributeName": "s", "KeyType": "RANGE"})
        extra["LocalSecondaryIndexes"] = [
            {
                "IndexName": "lsi",
                "KeySchema": [
                    {"AttributeName": "h", "KeyType": "HASH"},
                    {"AttributeName": "l", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ]
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in attrs.items()],
        KeySchema=keys,
        GlobalSecondaryIndexes=[
            {
                "IndexName": "gsi_hr",
                "KeySchema": [
                    {"AttributeName": "g", "KeyType": "HASH"},
                    {"AttributeName": "r", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            },
            {
                "IndexName": "gsi_h",
                "KeySchema": [{"AttributeName": "g2", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "KEYS_ONLY"},
            },
            {  # gsi_hr's keys, some attributes: moto projects each item anew (Item.project)
                "IndexName": "gsi_inc",
                "KeySchema": [
                    {"AttributeName": "g", "KeyType": "HASH"},
                    {"AttributeName": "r", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["v", "x"]},
            },
        ],
        **extra,
    )
    return name


def _value(schema: dict[str, Any], attr: str, choice: int) -> dict[str, str]:
    kind = schema[{"h": "hash", "s": "range"}.get(attr, attr)]
    pool = HASHES[kind] if attr in ("h", "g", "g2") else RANGES[kind]
    return {kind: pool[choice % len(pool)]}


_CHOICE = st.integers(0, 5)  # a value from the pool (modulo its length)
_PARTITION = st.integers(0, 2)  # a partition-key value: few, so partitions fill up
_OPTIONAL = st.sampled_from([None, 0, 1, 2, 3, 4, 5])  # None: the attribute is absent


# Any attribute value: the response serializer's change (3) writes the plain ones as they are
# and leaves binary ones (base64 on the wire) and anything unexpected to moto.
_SCALARS = st.one_of(
    st.builds(lambda v: {"S": v}, st.text(max_size=4)),
    st.builds(lambda v: {"N": str(v)}, st.integers(-999, 999)),
    st.builds(lambda v: {"B": v}, st.binary(max_size=4)),
    st.builds(lambda v: {"BOOL": v}, st.booleans()),
    st.just({"NULL": True}),
    st.builds(lambda v: {"SS": sorted(v)}, st.sets(st.text(min_size=1, max_size=3), min_size=1)),
    st.builds(lambda v: {"NS": sorted(map(str, v))}, st.sets(st.integers(0, 99), min_size=1)),
    st.builds(lambda v: {"BS": sorted(v)}, st.sets(st.binary(min_size=1, max_size=3), min_size=1)),
)
_UNICODE = st.builds(lambda v: {"S": v}, st.text(st.characters(min_codepoint=128), max_size=4))
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3)),
        st.builds(lambda v: {"M": v}, st.dictionaries(st.text(min_size=1, max_size=3), inner)),
    ),
    max_leaves=6,
)


@st.composite
def _items(draw: st.DrawFn) -> dict[str, Any]:
    """An item as choices: the schema turns them into values (`_item`)."""
    return {
        "h": draw(_PARTITION),
        "s": draw(_CHOICE),
        "g": draw(st.sampled_from([None, 0, 1, 2])),
        "r": draw(_OPTIONAL),
        "g2": draw(st.sampled_from([None, 0, 1, 2])),
        "l": draw(_OPTIONAL),
        "v": draw(st.integers(0, 9)),
        "pad": draw(st.sampled_from(PADS)),
        "x": draw(st.one_of(st.none(), _VALUES)),
    }


def _key(schema: dict[str, Any], choices: dict[str, Any]) -> dict[str, Any]:
    key = {"h": _value(schema, "h", choices["h"])}
    if schema["range"]:
        key["s"] = _value(schema, "s", choices["s"])
    return key


def _item(schema: dict[str, Any], choices: dict[str, Any]) -> dict[str, Any]:
    item = _key(schema, choices)
    for attr in ("g", "r", "g2", "l"):
        if choices[attr] is not None and (attr != "l" or schema["range"]):
            item[attr] = _value(schema, attr, choices[attr])
    item["v"] = {"N": str(choices["v"])}
    if choices["pad"]:
        item["pad"] = {"S": "x" * choices["pad"]}
    if choices.get("x") is not None:
        item["x"] = choices["x"]
        item["m"] = {"M": {"a": {"N": str(choices["v"] % 3)}, "b": choices["x"]}}
    return item


_WRITES = st.one_of(
    st.tuples(st.just("fill"), _items(), st.integers(1, 6)),  # n items in one partition
    st.tuples(st.just("put"), _items(), st.booleans()),
    st.tuples(
        st.just("update"),
        _items(),
        st.sampled_from(["SET g = :g", "REMOVE g", "SET r = :r", "REMOVE g2", "SET v = :v"]),
    ),
    st.tuples(st.just("delete"), _items()),
    st.tuples(
        st.just("transact"),
        st.lists(
            st.tuples(_items(), st.sampled_from(["put", "refused", "delete", "update"])),
            min_size=1,
            max_size=3,
        ),
    ),
    st.tuples(st.just("batch"), st.lists(_items(), min_size=1, max_size=4)),
)

# A FilterExpression (its values, besides :f), or "legacy": KeyConditions and QueryFilter
# (moto's filter_kwargs path, which can put one item in a page twice).
FILTERS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "none": None,
    "v": ("v > :f", {}),
    "x": ("attribute_exists(x) OR v < :f", {}),
    "m.a": ("m.a = :a OR attribute_type(x, :t)", {":a": {"N": "1"}, ":t": {"S": "M"}}),
    "legacy": None,
}
# Paths into x, any type, would meet moto's own failures: m is a map where present.
PROJECTIONS = {"none": None, "some": "#h, v, x", "nested": "m.b, m.a, #p", "keys": "#h"}
_QUERIES = st.fixed_dictionaries(
    {
        "index": st.sampled_from([None, "gsi_hr", "gsi_h", "gsi_inc", "lsi"]),
        "hash": st.integers(0, 3),  # 3: no item has it (in the pools of 3)
        "range": st.one_of(
            st.none(),
            st.tuples(
                st.sampled_from(["=", "<", "<=", ">", ">=", "BETWEEN", "begins_with"]),
                _CHOICE,
                _CHOICE,
            ),
        ),
        "forward": st.booleans(),
        "limit": st.one_of(st.none(), st.integers(1, 4)),
        "filter": st.sampled_from(sorted(FILTERS)),
        "projection": st.sampled_from(sorted(PROJECTIONS)),
        "count": st.booleans(),
    }
)


def _write(client: Any, table: str, schema: dict[str, Any], op: tuple[Any, ...]) -> Any:
    kind = op[0]
    if kind == "fill":
        for n in range(op[2]):
            choices = {**op[1], "s": n, "r": n, "l": n, "v": (op[1]["v"] + n) % 10}
            client.put_item(TableName=table, Item=_item(schema, choices))
        return "filled"
    if kind == "put":
        extra = {"ConditionExpression": "attribute_not_exists(h)"} if op[2] else {}
        return client.put_item(TableName=table, Item=_item(schema, op[1]), **extra)
    if kind == "update":
        choices, expression = op[1], op[2]
        values = {
            ":g": _value(schema, "g", choices["v"]),
            ":r": _value(schema, "r", choices["v"]),
            ":v": {"N": str(choices["v"])},
        }
        used = {k: v for k, v in values.items() if k in expression}
        return client.update_item(
            TableName=table,
            Key=_key(schema, choices),
            UpdateExpression=expression,
            **({"ExpressionAttributeValues": used} if used else {}),
        )
    if kind == "delete":
        return client.delete_item(TableName=table, Key=_key(schema, op[1]))
    if kind == "transact":
        actions: list[dict[str, Any]] = []
        for choices, action in op[1]:
            if action == "delete":
                actions.append({"Delete": {"TableName": table, "Key": _key(schema, choices)}})
            elif action == "update":  # in place: the item moves to another gsi_hr partition
                update = {
                    "TableName": table,
                    "Key": _key(schema, choices),
                    "UpdateExpression": "SET g = :g",
                    "ExpressionAttributeValues": {":g": _value(schema, "g", choices["v"])},
                }
                actions.append({"Update": update})
            else:
                put: dict[str, Any] = {"TableName": table, "Item": _item(schema, choices)}
                if action == "refused":  # cancels the transaction where the item exists
                    put["ConditionExpression"] = "attribute_not_exists(h)"
                actions.append({"Put": put})
        return client.transact_write_items(TransactItems=actions)
    requests = [{"PutRequest": {"Item": _item(schema, c)}} for c in op[1][:-1]]
    requests.append({"DeleteRequest": {"Key": _key(schema, op[1][-1])}})
    unique = {repr(sorted(_key(schema, c).items())): c for c in op[1]}
    if len(unique) < len(op[1]):
        return "duplicate keys: DynamoDB refuses, not compared"
    return client.batch_write_item(RequestItems={table: requests})


_LEGACY_OPS = {"=": "EQ", "<": "LT", "<=": "LE", ">": "GT", ">=": "GE", "BETWEEN": "BETWEEN"}


def _query(client: Any, table: str, schema: dict[str, Any], q: dict[str, Any]) -> list[Any]:
    """Every page of the Query, following LastEvaluatedKey."""
    index = q["index"]
    if index == "lsi" and not schema["range"]:
        index = None
    hash_attr, range_attr = {
        None: ("h", "s" if schema["range"] else None),
        "gsi_hr": ("g", "r"),
        "gsi_inc": ("g", "r"),
        "gsi_h": ("g2", None),
        "lsi": ("h", "l"),
    }[index]
    names = {"#h": hash_attr}
    values = {":h": _value(schema, hash_attr, q["hash"])}
    condition = "#h = :h"
    legacy = {hash_attr: {"ComparisonOperator": "EQ", "AttributeValueList": [values[":h"]]}}
    if q["range"] and range_attr:
        op, low, high = q["range"]
        kind = schema[{"s": "range"}.get(range_attr, range_attr)]
        names["#r"] = range_attr
        values[":lo"] = _value(schema, range_attr, min(low, high))
        legacy[range_attr] = {"ComparisonOperator": _LEGACY_OPS.get(op, "BEGINS_WITH")}
        legacy[range_attr]["AttributeValueList"] = [values[":lo"]]
        if op == "BETWEEN":
            values[":hi"] = _value(schema, range_attr, max(low, high))
            condition += " AND #r BETWEEN :lo AND :hi"
            legacy[range_attr]["AttributeValueList"].append(values[":hi"])
        elif op == "begins_with" and kind == "S":
            condition += " AND begins_with(#r, :lo)"
        elif op != "begins_with":
            condition += f" AND #r {op} :lo"
        else:
            del values[":lo"], legacy[range_attr]
    request: dict[str, Any] = {"TableName": table, "ScanIndexForward": q["forward"]}
    if index:
        request["IndexName"] = index
    if q["limit"]:
        request["Limit"] = q["limit"]
    if q["count"]:
        request["Select"] = "COUNT"
    if q["filter"] == "legacy":  # no expressions at all: DynamoDB refuses a mix
        request["KeyConditions"] = legacy
        request["QueryFilter"] = {
            "v": {"ComparisonOperator": "GT", "AttributeValueList": [{"N": "4"}]}
        }
        return _pages(client.query, request)
    request["KeyConditionExpression"] = condition
    _expressions(request, names, values, q)
    return _pages(client.query, request)


def _expressions(
    request: dict[str, Any], names: dict[str, str], values: dict[str, Any], q: dict[str, Any]
) -> None:
    """The request's FilterExpression and ProjectionExpression (q's), names and values."""
    names = {**names, "#h": names.get("#h", "h"), "#p": "pad"}
    filtered = FILTERS[q["filter"]]
    if filtered:
        request["FilterExpression"], more = filtered
        values = {**values, ":f": {"N": "4"}, **more}
    projection = PROJECTIONS[q["projection"]]
    if projection and not q["count"]:
        request["ProjectionExpression"] = projection
    used = " ".join(str(request.get(k)) for k in ("KeyConditionExpression", *EXPRESSIONS))
    names = {k: v for k, v in names.items() if k in used}  # DynamoDB refuses unused ones
    values = {k: v for k, v in values.items() if k in used}
    if names:
        request["ExpressionAttributeNames"] = names
    if values:
        request["ExpressionAttributeValues"] = values


EXPRESSIONS = ("FilterExpression", "ProjectionExpression")


def _pages(call: Any, request: dict[str, Any]) -> list[Any]:
    pages = []
    for _ in range(60):
        page = call(**request)
        page.pop("ResponseMetadata")
        pages.append(page)
        if "LastEvaluatedKey" not in page:
            return pages
        request["ExclusiveStartKey"] = page["LastEvaluatedKey"]
    raise AssertionError("more than 60 pages")


_SCANS = st.fixed_dictionaries(
    {
        "index": st.sampled_from([None, "gsi_hr", "gsi_h", "gsi_inc", "lsi"]),
        "limit": st.one_of(st.none(), st.integers(1, 4)),
        "filter": st.sampled_from(sorted(set(FILTERS) - {"legacy"})),
        "projection": st.sampled_from(sorted(PROJECTIONS)),
        "count": st.booleans(),
        "segment": st.sampled_from([None, 0, 1]),  # of 2
    }
)


def _scan(client: Any, table: str, schema: dict[str, Any], q: dict[str, Any]) -> list[Any]:
    """Every page of the Scan (of an index, or the table), following LastEvaluatedKey."""
    request: dict[str, Any] = {"TableName": table}
    if q["index"] and (q["index"] != "lsi" or schema["range"]):
        request["IndexName"] = q["index"]
    if q["limit"]:
        request["Limit"] = q["limit"]
    if q["count"]:
        request["Select"] = "COUNT"
    if q["segment"] is not None:
        request["Segment"], request["TotalSegments"] = q["segment"], 2
    _expressions(request, {}, {}, q)
    return _pages(client.scan, request)


def _answer(run: Any, client: Any, table: str, schema: dict[str, Any], op: Any) -> str:
    """`run`'s answer, or error, as JSON with the table's name replaced."""
    try:
        answer = run(client, table, schema, op)
    except botocore.exceptions.ClientError as exc:
        answer = ("error", exc.response["Error"]["Code"], exc.response["Error"]["Message"])
    except Exception as exc:  # moto's own failure (in process it reaches the caller as is)
        answer = ("error", type(exc).__name__, str(exc))
    if isinstance(answer, dict):
        answer.pop("ResponseMetadata", None)
    return json.dumps(answer, sort_keys=True, default=repr).replace(f'"{table}"', '"TABLE"')


@pytest.fixture(scope="module")
def module_dynamodb() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    schema=_schemas(),
    filled=st.lists(  # first: partitions with items in them, so most reads find some
        st.tuples(st.just("write"), st.tuples(st.just("fill"), _items(), st.integers(2, 6))),
        min_size=1,
        max_size=4,
    ),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("write"), _WRITES),
            st.tuples(st.just("query"), _QUERIES),
            st.tuples(st.just("scan"), _SCANS),
        ),
        min_size=5,
        max_size=30,
    ),
)
def test_every_query_and_scan_is_answered_as_moto_answers_it(
    module_dynamodb, schema, filled, steps
):
    with as_released():
        released = _create(module_dynamodb, schema)
    with changed():
        changed_table = _create(module_dynamodb, schema)
    for kind, op in filled + steps:
        run = {"write": _write, "query": _query, "scan": _scan}[kind]
        with as_released():
            plain = _answer(run, module_dynamodb, released, schema, op)
        with changed():
            answer = _answer(run, module_dynamodb, changed_table, schema, op)
        assert answer == plain, (kind, op)
        if kind != "write":
            pages = json.loads(plain)
            if pages[0] == "error":
                event(f"{kind}: {pages[1]}: {pages[2][:70]}")
            else:
                items = sum(p["Count"] for p in pages)
                event(f"{kind}: {min(len(pages), 3)} pages, items: {min(items, 3)}")
                if not op["limit"] and len(pages) > 1:
                    event(f"{kind}: a page stopped at 1 MB")
                if any(p.get("Items") and p["Count"] < p["ScannedCount"] for p in pages):
                    event(f"{kind}: the filter dropped items")


def _ledger_like(client: Any, items: int) -> str:
    """A table shaped like the ledger's: a sharded by-key index (gsi_bucket, gsi_key)."""
    client.create_table(**table_definition(name := f"ledger-{next(_tables)}"))
    for n in range(items):
        item = {
            "pk": {"S": f"p{n}"},
            "sk": {"S": "v"},
            "gsi_key": {"S": f"k{n:05d}"},
            "size": {"N": str(n)},
        }
        if n % 5:  # every fifth item is absent from the index (sparse)
            item["gsi_bucket"] = {"S": f"b#{n % 3}"}
        client.put_item(TableName=name, Item=item)
    return name


def _by_key(table: str, shard: int, **more: Any) -> dict[str, Any]:
    return {
        "TableName": table,
        "IndexName": KEY_INDEX,
        "KeyConditionExpression": "gsi_bucket = :b",
        "ExpressionAttributeValues": {":b": {"S": f"b#{shard}"}, **more.pop("values", {})},
        **more,
    }


def test_an_index_query_reads_one_partition_and_answers_as_the_guide_says(
    module_dynamodb, monkeypatch
):
    table = _ledger_like(module_dynamodb, 60)
    with changed():
        whole_table_reads = []
        monkeypatch.setattr(
            moto_server, "_MOTO_ALL_ITEMS", lambda t: whole_table_reads.append(t) or []
        )
        every = module_dynamodb.query(**_by_key(table, 1))
        backwards = module_dynamodb.query(**_by_key(table, 1, ScanIndexForward=False))
        limited = module_dynamodb.query(
            **_by_key(
                table,
                1,
                Limit=6,
                FilterExpression="#s > :s",
                values={":s": {"N": "5"}},
                ExpressionAttributeNames={"#s": "size"},
            )
        )
        counted = module_dynamodb.query(**_by_key(table, 1, Select="COUNT"))
    assert whole_table_reads == []  # moto's all_items() was not asked
    # the partition's items that have the index keys (n % 5 == 0 do not), in sort-key order
    expected = [f"k{n:05d}" for n in range(60) if n % 3 == 1 and n % 5]
    assert [i["gsi_key"]["S"] for i in every["Items"]] == expected
    assert [i["gsi_key"]["S"] for i in backwards["Items"]] == expected[::-1]
    # Limit counts the items read, before the filter: ScannedCount 6, Count those over 5
    assert limited["ScannedCount"] == 6
    assert [i["gsi_key"]["S"] for i in limited["Items"]] == [
        k for k in expected[:6] if int(k[1:]) > 5
    ]
    assert len(limited["Items"]) == 4
    assert limited["LastEvaluatedKey"]["gsi_key"] == {"S": expected[5]}
    assert counted["Count"] == len(expected) and "Items" not in counted


def test_the_index_lookup_is_built_once_and_again_after_a_write(module_dynamodb, monkeypatch):
    table = _ledger_like(module_dynamodb, 30)
    builds = []
    real = moto_server._IndexLookup.__init__

    def counted(self: Any, *args: Any) -> None:
        builds.append(args[1])
        real(self, *args)

    monkeypatch.setattr(moto_server._IndexLookup, "__init__", counted)
    with changed():
        first = [module_dynamodb.query(**_by_key(table, s))["Count"] for s in range(3)]
        assert len(builds) == 1  # three partitions, one build; reads do not count as writes
        module_dynamodb.update_item(
            TableName=table,
            Key={"pk": {"S": "p1"}, "sk": {"S": "v"}},
            UpdateExpression="SET gsi_bucket = :b",
            ExpressionAttributeValues={":b": {"S": "b#2"}},
        )
        after = [module_dynamodb.query(**_by_key(table, s))["Count"] for s in range(3)]
    assert len(builds) == 2
    assert after == [first[0], first[1] - 1, first[2] + 1]  # p1 moved from b#1 to b#2 in place


# -- 4. A page's copies, sizes and response --------------------------------------------------


_STORED_KEY = {"pk": {"S": "p"}, "sk": {"S": "v"}}


def _stored(client: Any) -> tuple[str, dict[str, Any]]:
    """A table with one item of every kind of attribute value moto can change in place."""
    client.create_table(**table_definition(name := f"ledger-{next(_tables)}"))
    item = {
        "pk": {"S": "p"},
        "sk": {"S": "v"},
        "gsi_bucket": {"S": "b#0"},
        "gsi_key": {"S": "k"},
        "s": {"S": "text"},
        "n": {"N": "1"},
        "b": {"B": b"bytes"},
        "flag": {"BOOL": True},
        "ss": {"SS": ["a"]},
        "ns": {"NS": ["1"]},
        "l": {"L": [{"S": "first"}, {"M": {"deep": {"N": "2"}}}]},
        "m": {"M": {"k": {"S": "v"}, "inner": {"L": [{"N": "3"}]}}},
    }
    client.put_item(TableName=name, Item=item)
    return name, item


def _change_as_moto_writes_do(answer: Any) -> None:
    """What moto's writes do to a stored item (parsing/executors.py, dynamo_type.py), done to
    an answer: replace and delete attributes, change L, M and sets in place."""
    attrs = answer.attrs
    attrs["s"] = DynamoType({"S": "replaced"})
    del attrs["n"]
    attrs["ss"].value.append("added")  # ADD ss :v
    attrs["ns"].value.remove("1")  # DELETE ns :v
    attrs["l"].value[1]["deep"] = DynamoType({"N": "9"})  # SET l[1].deep = :v
    attrs["l"].value.append(DynamoType({"S": "appended"}))  # SET l[5] = :v
    attrs["m"]["k"] = DynamoType({"S": "changed"})  # SET m.k = :v
    attrs["m"].value["inner"].value.pop()  # REMOVE m.inner[0]
    del attrs["l"].value[0]  # REMOVE l[0]
    answer.hash_key = DynamoType({"S": "other"})


@pytest.mark.parametrize("moto", ["as released", "changed"])
@pytest.mark.parametrize("read", ["table query", "index query", "scan", "index scan"])
def test_a_caller_changing_an_answer_does_not_change_the_stored_item(module_dynamodb, moto, read):
    # the reason moto copies a page: its answer is not the stored item
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    table, item = _stored(module_dynamodb)
    with as_released() if moto == "as released" else changed():
        if read.endswith("query"):
            index = KEY_INDEX if read == "index query" else None
            hash_key = {"S": "b#0"} if index else {"S": "p"}
            answers, _, _ = backend.query(
                table,
                hash_key,
                None,
                [],
                None,
                None,
                True,
                None,
                index_name=index,
                hash_key_conditions=[("gsi_bucket" if index else "pk", hash_key)],
            )
        else:
            index = KEY_INDEX if read == "index scan" else None
            answers, _, _ = backend.scan(
                table, {}, None, None, None, {}, {}, index, False, None, (None, None)
            )
        assert len(answers) == 1
        _change_as_moto_writes_do(answers[0])
        stored = module_dynamodb.get_item(TableName=table, Key=_STORED_KEY)
        again = module_dynamodb.query(**_by_key(table, 0))["Items"]
    assert stored["Item"] == item
    assert again == [item]


@pytest.mark.parametrize("moto", ["as released", "changed"])
def test_a_write_after_a_query_does_not_change_its_answer(module_dynamodb, moto):
    # the other way round: UpdateItem changes L, M and sets of the stored item in place
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    backend = dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]
    table, _ = _stored(module_dynamodb)
    with as_released() if moto == "as released" else changed():
        answers, _, _ = backend.query(
            table, {"S": "p"}, None, [], None, None, True, None, hash_key_conditions=[]
        )
        before = answers[0].to_json()
        module_dynamodb.update_item(
            TableName=table,
            Key=_STORED_KEY,
            UpdateExpression="SET m.k = :v, l[0] = :v, s = :v ADD ss :set, n :one",
            ExpressionAttributeValues={
                ":v": {"S": "new"},
                ":set": {"SS": ["z"]},
                ":one": {"N": "1"},
            },
        )
        after = module_dynamodb.get_item(TableName=table, Key=_STORED_KEY)["Item"]
    assert after["ss"] == {"SS": ["a", "z"]} and after["m"]["M"]["k"] == {"S": "new"}
    assert answers[0].to_json() == before  # the answer as it was read
    assert before["Attributes"]["ss"] == {"SS": ["a"]}


def test_a_page_with_one_item_twice_has_one_copy_twice_as_deepcopy_makes_it():
    # moto's legacy QueryFilter puts an item in a page once per condition it meets
    item = Item(DynamoType({"S": "p"}), None, {"pk": {"S": "p"}, "m": {"M": {"a": {"N": "1"}}}})
    copied = moto_server._PageCopies.deepcopy([item, item])
    assert copied[0] is copied[1] and copied[0] is not item
    assert copied[0].attrs["m"] is not item.attrs["m"] and copied[0].to_json() == item.to_json()
    by_moto = copy.deepcopy([item, item])
    assert by_moto[0] is by_moto[1]


def test_each_result_is_sized_once_per_query(module_dynamodb, monkeypatch):
    table = _ledger_like(module_dynamodb, 40)
    sized: list[Any] = []
    real = moto_server._size_of
    monkeypatch.setattr(moto_server, "_size_of", lambda i: sized.append(i) or real(i))
    with changed():
        every = module_dynamodb.query(**_by_key(table, 1))
        assert len(sized) == every["Count"] > 4  # moto asks twice per result
        sized.clear()
        pages = _pages(module_dynamodb.query, _by_key(table, 1, Limit=4))
    assert sum(p["Count"] for p in pages) == every["Count"] and len(pages) > 1
    # a page's Limit is met at the next item, sized and left for the next page's Query
    assert len(sized) == every["Count"] + len(pages) - 1


@settings(max_examples=200, deadline=None)
@given(attrs=st.dictionaries(st.text(min_size=1, max_size=4), _VALUES | _UNICODE, max_size=6))
def test_an_item_is_sized_as_moto_sizes_it(attrs):
    try:
        item = Item(DynamoType({"S": "h"}), None, attrs)
    except UnicodeEncodeError:  # a lone surrogate: moto sizes an item as it makes it, and fails
        assume(False)

    def sized(size: Any) -> Any:
        try:
            return size(item)
        except UnicodeEncodeError as exc:  # a lone surrogate: moto cannot size it either
            return repr(exc)

    assert sized(moto_server._size_of) == sized(moto_server._MOTO_ITEM_SIZE)


_TREES = st.recursive(
    st.one_of(
        _VALUES.map(DynamoType),
        st.none(),
        st.booleans(),
        st.integers(),
        st.text(max_size=3),
        st.binary(max_size=3),
        st.datetimes(),
        st.just(DynamoType({"S": b"not a str"})),
        st.just(DynamoType({"SS": ("a", "tuple")})),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=3), inner, max_size=3),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(LimitedSizeDict),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(tree=_TREES)
def test_the_response_is_built_as_moto_builds_it(tree):
    from moto.dynamodb.models.utilities import dynamo_to_dict

    made = moto_server._dynamo_to_dict(tree)
    assert repr(made) == repr(dynamo_to_dict(tree))  # repr: True is not 1, b"a" is not "a"


def test_moto_as_released_is_moto_without_any_of_the_changes():
    """`as_released` takes out every change `install` makes, the other modules' too (they
    stayed installed before, so a comparison "with moto as released" ran with them), and
    puts them all back after."""
    moto_server.install()
    parts = (moto_server, moto_dynamodb_fast, moto_sqs, moto_dynamodb_writes)
    assert all(part.installed() for part in parts)
    with moto_server.as_released():
        assert not any(part.installed() for part in parts)
    assert all(part.installed() for part in parts)
