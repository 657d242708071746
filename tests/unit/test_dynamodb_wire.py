"""agent/dynamodb_wire.py: DynamoDB's responses parsed without the shape walk give exactly what
botocore's own JSON parser gives, on the same bytes: the same result, or both raise."""

from __future__ import annotations

import base64
import json
from typing import Any

import boto3.session
import botocore.session
import pytest
from botocore.parsers import JSONParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from agent.aws import fast_parsers, http_date, session_clients
from agent.dynamodb_wire import DynamoDBJSONParser, is_attribute_value

_LOADER = botocore.session.get_session()
DYNAMODB = _LOADER.get_service_model("dynamodb")
SQS = _LOADER.get_service_model("sqs")

# -- responses: well-formed attribute values, and every way one can be odd -------------------

texts = st.text(max_size=12)  # any code point, lone surrogates too (JSON escapes them)
numbers = st.one_of(
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)
blobs = st.binary(max_size=16).map(lambda raw: base64.b64encode(raw).decode("ascii"))
# what a member may hold when it is not what the model says
odd = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    texts,
    st.lists(st.one_of(st.none(), st.integers(), texts), max_size=3),
    st.dictionaries(texts, st.one_of(st.none(), st.integers(), texts), max_size=3),
    st.sampled_from(["not base64!", "QQ", "QUI=", "=", "\u00e9", "QUJD\nRA=="]),  # bad blobs
)


def _values(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    well_formed = st.one_of(
        st.builds(lambda v: {"S": v}, texts),
        st.builds(lambda v: {"N": v}, numbers),
        st.builds(lambda v: {"B": v}, blobs),
        st.builds(lambda v: {"SS": v}, st.lists(texts, max_size=4)),
        st.builds(lambda v: {"NS": v}, st.lists(numbers, max_size=4)),
        st.builds(lambda v: {"BS": v}, st.lists(blobs, max_size=4)),
        st.builds(lambda v: {"NULL": v}, st.booleans()),
        st.builds(lambda v: {"BOOL": v}, st.booleans()),
        st.builds(lambda v: {"M": v}, st.dictionaries(texts, children, max_size=4)),
        st.builds(lambda v: {"L": v}, st.lists(children, max_size=4)),
    )
    tags = st.sampled_from(
        ["S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL", "X", "s", "", "__type"]
    )
    members = st.one_of(odd, children, st.lists(children, max_size=3))
    malformed = st.one_of(
        st.dictionaries(tags, members, min_size=2, max_size=4),  # several, unknown, null
        st.dictionaries(tags, members, max_size=1),
        st.builds(lambda tag: {tag: None}, tags),  # one member, null
        st.builds(lambda v: {"SS": [v]}, odd),
        st.builds(lambda v: {"BS": [v]}, odd),
        st.builds(lambda v: {"L": [v]}, odd),
        st.builds(lambda v: {"M": {"k": v}}, odd),
        odd,  # an attribute value that is not an object at all
    )
    return st.one_of(well_formed, well_formed, malformed)


attribute_values = st.recursive(
    st.one_of(st.builds(lambda v: {"S": v}, texts), st.builds(lambda v: {"N": v}, numbers)),
    _values,
    max_leaves=12,
)
item_maps = st.dictionaries(texts, attribute_values, max_size=6)
# mostly items, now and then something that is not an object (one in ten)
items = st.tuples(st.integers(0, 9), item_maps, odd).map(lambda t: t[2] if t[0] == 0 else t[1])


def _body(operation: str, draw_items: list[Any], extra: dict[str, Any]) -> dict[str, Any]:
    if operation in ("Query", "Scan"):
        return {"Items": draw_items, "Count": len(draw_items), **extra}
    if operation == "GetItem":
        return {"Item": draw_items[0] if draw_items else {}, **extra}
    if operation == "BatchGetItem":
        return {"Responses": {"table": draw_items}, "UnprocessedKeys": {}, **extra}
    assert operation == "TransactGetItems"
    return {"Responses": [{"Item": item} for item in draw_items], **extra}


def _parse(parser: Any, body: bytes, shape: Any, status: int = 200) -> tuple[str, Any]:
    response = {"body": body, "headers": {"x-amzn-requestid": "r"}, "status_code": status}
    try:
        return "parsed", parser.parse(response, shape)
    except Exception as exc:
        return "raised", type(exc)


def _same(body: bytes, shape: Any, status: int = 200) -> None:
    ours = _parse(DynamoDBJSONParser(timestamp_parser=http_date), body, shape, status)
    theirs = _parse(JSONParser(timestamp_parser=http_date), body, shape, status)
    assert ours == theirs
    if ours[0] == "parsed":  # the same order too (botocore's is the model's member order)
        assert repr(ours[1]) == repr(theirs[1])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operation=st.sampled_from(["Query", "Scan", "GetItem", "BatchGetItem", "TransactGetItems"]),
    drawn=st.lists(items, max_size=4),
    last_key=st.one_of(st.just({}), st.dictionaries(texts, attribute_values, max_size=2)),
    odd_list=st.booleans(),
)
def test_a_response_parses_exactly_as_botocores_own_parser_parses_it(
    operation, drawn, last_key, odd_list
):
    extra = {"LastEvaluatedKey": last_key} if last_key and operation in ("Query", "Scan") else {}
    body = _body(operation, drawn, extra)
    if odd_list and operation in ("Query", "Scan"):
        body["Items"] = drawn[0] if drawn else None  # Items not a list: botocore's walk
    shape = DYNAMODB.operation_model(operation).output_shape
    _same(json.dumps(body).encode(), shape)


@settings(max_examples=100, deadline=None)
@given(item=items)
def test_a_failed_conditions_item_parses_exactly_as_botocore_parses_it(item):
    """PutItem's ConditionalCheckFailedException carries the item (ALL_OLD): the modeled
    error's second parse goes through the same handlers."""
    shape = DYNAMODB.shape_for("ConditionalCheckFailedException")
    body = {"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"}
    body |= {"message": "The conditional request failed", "Item": item}
    _same(json.dumps(body).encode(), shape, status=400)


@pytest.mark.parametrize(
    "item",
    [
        {"a": {"S": "x", "N": "1"}},  # two members: both kept, in the model's order
        {"a": {"N": "1", "S": "x"}},
        {"a": {"X": "1"}},  # unknown: dropped
        {"a": {"S": None}},  # null member: dropped
        {"a": {"M": None}, "b": {"B": None, "N": "1"}},
        {"a": None},  # null value: None
        {"a": {"SS": "abc"}},  # a string where a list belongs: botocore iterates it
        {"a": {"L": "ab"}},  # ... and then fails on each character
        {"a": {"M": ["x"]}},
        {"a": {"B": "QQ"}},  # bad padding: binascii.Error
        {"a": {"B": 5}},
        {"a": {"BS": [None, "QUI="]}},
        {"a": {"SS": [None, "x"]}, "b": {"L": [None, {"S": "y"}]}},
        {"a": "S"},
        {"a": {"S": {"nested": 1}}},  # S is taken as given, whatever its type
        {"a": {"NULL": False, "BOOL": False}},
        {"a": {}},
        {"\u00e9\U0001f600": {"S": "\u0000\u00e9\U0001f600"}},
    ],
)
def test_odd_attribute_values_parse_as_botocore_parses_them(item):
    shape = DYNAMODB.operation_model("Query").output_shape
    _same(json.dumps({"Items": [item], "Count": 1}).encode(), shape)


def test_another_services_shapes_are_left_to_botocore():
    """SQS speaks JSON too; its ReceiveMessage maps are botocore's to parse."""
    shape = SQS.operation_model("ReceiveMessage").output_shape
    message = {"MessageId": "m", "Body": "b", "MessageAttributes": {"a": {"DataType": "String"}}}
    body = json.dumps({"Messages": [message]}).encode()
    _same(body, shape)
    assert not is_attribute_value(SQS.shape_for("MessageAttributeValue"))
    assert is_attribute_value(DYNAMODB.shape_for("AttributeValue"))


def test_the_sessions_clients_get_the_fast_parser_once_with_the_timestamp_parser():
    session = boto3.session.Session(region_name="us-east-1")
    fast_parsers(session)
    fast_parsers(session)  # a second call keeps the same factory
    factory = session._session.get_component("response_parser_factory")
    parser = factory.create_parser("json")
    assert type(parser) is DynamoDBJSONParser and parser._timestamp_parser is http_date
    assert type(factory.create_parser("rest-xml")) is not DynamoDBJSONParser


def test_a_query_page_through_moto_is_the_same_as_a_stock_clients():
    """End to end: a client from `session_clients` and a stock boto3 client read the same
    Query page (binary, sets, nested maps and lists, unicode) from moto alike."""
    with mock_aws():
        ours = session_clients(boto3.session.Session(region_name="us-east-1")).dynamodb
        stock = boto3.session.Session(region_name="us-east-1").client("dynamodb")
        assert type(stock._endpoint._response_parser_factory.create_parser("json")) is JSONParser
        stock.create_table(
            TableName="t",
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        for index in range(25):
            stock.put_item(
                TableName="t",
                Item={
                    "pk": {"S": "bucket/k\u00e9y"},
                    "sk": {"S": f"V#{index:03}"},
                    "size": {"N": str(10**30 + index)},
                    "blob": {"B": bytes([index, 0, 255])},
                    "sets": {"SS": ["a", "\U0001f600"]},
                    "numbers": {"NS": ["1", "2.5"]},
                    "blobs": {"BS": [b"\x00", b"\x01"]},
                    "nested": {
                        "M": {
                            "list": {"L": [{"NULL": True}, {"BOOL": False}, {"S": ""}]},
                            "map": {"M": {}},
                        }
                    },
                },
            )
        query = {
            "TableName": "t",
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": "bucket/k\u00e9y"}},
            "Limit": 10,
        }
        page, expected = ours.query(**query), stock.query(**query)
        for response in (page, expected):
            del response["ResponseMetadata"]  # request ids and dates differ
        assert page == expected and page["Count"] == 10 and page["LastEvaluatedKey"]
        assert page["Items"][3]["blob"] == {"B": bytes([3, 0, 255])}
        key = {"pk": {"S": "bucket/k\u00e9y"}, "sk": {"S": "V#003"}}
        got = ours.get_item(TableName="t", Key=key)
        assert got["Item"] == stock.get_item(TableName="t", Key=key)["Item"]
