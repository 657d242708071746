"""`item_values` reads an item as boto3's `TypeDeserializer` does, attribute for attribute:
the same values, or the same exception for a value it refuses; and a fleet member item gives
the same Member (or the same BadMember) as the registry's former reading (the deserializer on
every attribute, agent/fleet/registry.py before this module)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer, TypeSerializer
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.fleet.member import BadMember, Member
from agent.fleet.registry import _storable
from agent.storage.item_values import item_values

numbers = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=5).map(str),
    st.sampled_from(["1e200", "1E-130", "0.1e126", "abc", "", " 1", "1_0", "Infinity"]),
)
plain = st.one_of(
    st.text(max_size=8).map(lambda s: {"S": s}),
    numbers.map(lambda n: {"N": n}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
)
odd = st.one_of(  # what a hand-edited or hostile item may hold
    st.just({}),
    st.just({"X": 1}),
    st.just({"S": "a", "N": "1"}),
    st.integers().map(lambda i: {"S": i}),  # taken as given, as the deserializer does
    st.just({"NULL": False}),
    st.just("not a value"),
    st.just(None),
    st.binary(max_size=4).map(lambda b: {"B": b}),
)
values = st.recursive(
    st.one_of(plain, odd),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: {"L": xs}),
        st.dictionaries(st.text(max_size=3), inner, max_size=3).map(lambda m: {"M": m}),
        st.sets(st.text(max_size=3), min_size=1, max_size=3).map(lambda s: {"SS": sorted(s)}),
        st.sets(st.integers(-99, 99).map(str), min_size=1, max_size=3).map(
            lambda s: {"NS": sorted(s)}
        ),
    ),
    max_leaves=6,
)
items = st.dictionaries(st.text(max_size=6), values, max_size=6)


def deserialized(item: dict[str, Any]) -> dict[str, Any]:
    """The registry's former reading."""
    deserializer = TypeDeserializer()
    return {k: deserializer.deserialize(v) for k, v in item.items()}


def outcome(read: Any, item: dict[str, Any]) -> Any:
    """The values (by repr: a number that is not one reads as Decimal('NaN'), unequal to
    itself), or the kind of refusal."""
    try:
        return ("values", repr(read(item)))
    except Exception as exc:
        return ("raised", type(exc))


@given(item=items)
@settings(max_examples=400, deadline=None)
def test_any_item_reads_as_the_deserializer_reads_it(item: dict[str, Any]) -> None:
    assert outcome(item_values, item) == outcome(deserialized, item)


def test_the_plain_members_give_the_deserializers_types() -> None:
    item = {"s": {"S": "x"}, "n": {"N": "1.50"}, "b": {"BOOL": False}, "z": {"NULL": True}}
    assert item_values(item) == deserialized(item) == {
        "s": "x", "n": Decimal("1.50"), "b": False, "z": None
    }  # fmt: skip
    binary = {"v": {"B": b"\x00"}, "l": {"L": [{"S": "a"}]}, "ss": {"SS": ["a", "b"]}}
    assert item_values(binary) == {"v": Binary(b"\x00"), "l": ["a"], "ss": {"a", "b"}}


def member_item() -> dict[str, Any]:
    """A member's item as Registry.announce writes it."""
    at = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    member = Member(
        member_id="i-0abc/vol-0123456789abcdef0",
        instance_id="i-0abc",
        volume_id="vol-0123456789abcdef0",
        availability_zone="us-east-1a",
        version="1.0.0",
        started=at,
        heartbeat=at,
        interval_seconds=30.0,
        state="active",
        paused_reason=None,
        disk_used_ratio=0.25,
        lag_seconds=None,
        backed_up=7,
    )
    serializer = TypeSerializer()
    item = {k: serializer.serialize(_storable(v)) for k, v in member.to_dict().items()}
    return {**item, "pk": {"S": "fleet#q"}, "sk": {"S": "member#" + member.member_id}}


def member_outcome(values: dict[str, Any]) -> Any:
    try:
        return Member.from_dict(values)
    except BadMember as exc:
        return str(exc)


MUTATIONS: list[tuple[str, Any]] = [
    ("interval_seconds", {"N": "0"}),
    ("interval_seconds", {"S": "30"}),
    ("interval_seconds", {"BOOL": True}),
    ("backed_up", {"N": "-1"}),
    ("heartbeat", {"S": "yesterday"}),
    ("heartbeat", {"N": "1700000000"}),
    ("state", {"S": "sleeping"}),
    ("state", {"NULL": True}),
    ("member_id", {"SS": ["a"]}),
    ("volume_id", {"L": [{"S": "vol-1"}]}),
    ("paused_reason", {"S": "disk full"}),
    ("disk_used_ratio", {"M": {"x": {"N": "1"}}}),
    ("lag_seconds", {"N": "12.5"}),
    ("extra", {"B": b"\x01"}),
]


@pytest.mark.parametrize(("name", "value"), [(None, None), *MUTATIONS])
def test_a_member_item_gives_the_same_member_or_the_same_problem(
    name: str | None, value: Any
) -> None:
    item = member_item()
    if name is not None:
        item[name] = value
    new, old = member_outcome(item_values(item)), member_outcome(deserialized(item))
    assert new == old
    if name is None:
        assert isinstance(new, Member) and new.backed_up == 7
