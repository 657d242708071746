"""`parse_item` without boto3's `TypeDeserializer` for plain attributes (issue 19) is exactly
as strict as the form it replaced (tests/support/ledger_reference.py): on well-formed items
mutated attribute by attribute and on untrusted ones (wrong types, huge numbers, sets,
nested maps, several or unknown members, values that are not objects), both accept the
same record or reject with the same reason, place and digest."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agent.aws import dynamodb_serializer
from agent.storage.ledger import parse_item
from tests.support import ledger_reference
from tests.support.record_fields import WELL_FORMED

RECORD: dict[str, Any] = {
    **WELL_FORMED,
    "storage_class": "STANDARD",
    "metadata": {"owner": "ops"},
}
SERIALIZED = {name: dynamodb_serializer().serialize(value) for name, value in RECORD.items()}
KEYS = {"pk": {"S": "bench-small/small/00002.json"}, "sk": {"S": "LATEST"}}
NAMES = [*RECORD, "pk", "sk", "holders", "unknown", "unreadable", "category", "sequencer"]

texts = st.one_of(
    st.text(max_size=10),
    st.sampled_from(["", "\x00", "LATEST", "V#x", "2026-11-01T09:00:00Z", "0" * 64, "q-a"]),
)
numbers = st.one_of(
    st.integers(min_value=-(10**45), max_value=10**45).map(str),
    st.sampled_from(
        [
            "0",
            "-0",
            "4096",
            "1.5",
            "1e400",
            "1e-400",
            "1" * 39,
            "9" * 38,
            "NaN",
            "Infinity",
            "-Infinity",
            " 12",
            "1_000",
            "0x10",
            "",
            "1e126",
            "1e127",
            "1E2",
            "+7",
            "١٢",
        ]
    ),
)
odd = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.binary(max_size=4))


def _wire(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    tags = st.sampled_from(
        ["S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL", "s", "n", "Bool", "X", ""]
    )
    return st.one_of(
        st.builds(lambda v: {"S": v}, texts),
        st.builds(lambda v: {"N": v}, numbers),
        st.builds(lambda v: {"BOOL": v}, st.booleans()),
        st.builds(lambda v: {"NULL": v}, st.booleans()),
        st.builds(lambda v: {"B": v}, st.binary(max_size=4)),
        st.builds(lambda v: {"SS": v}, st.lists(texts, max_size=3)),
        st.builds(lambda v: {"NS": v}, st.lists(numbers, max_size=3)),
        st.builds(lambda v: {"BS": v}, st.lists(st.binary(max_size=3), max_size=3)),
        st.builds(lambda v: {"M": v}, st.dictionaries(texts, children, max_size=3)),
        st.builds(lambda v: {"L": v}, st.lists(children, max_size=3)),
        st.dictionaries(tags, st.one_of(odd, children), max_size=3),  # several, unknown, none
        st.builds(lambda tag, v: {tag: v}, st.sampled_from(["S", "N", "BOOL", "NULL"]), odd),
        odd,  # not an object at all
    )


wire_values = st.recursive(st.builds(lambda v: {"S": v}, texts), _wire, max_leaves=8)
plain = st.one_of(texts, numbers, st.booleans(), st.none())
# the fast path's edges: one plain member in another spelling (boto3 lower-cases the tag),
# several plain members (boto3 reads the first), a plain tag holding the wrong type
tricky = st.one_of(
    st.builds(
        lambda tag, v: {tag: v},
        st.sampled_from(["s", "n", "Bool", "bool", "null", "Null", "ns", "S ", "N#"]),
        plain,
    ),
    st.dictionaries(st.sampled_from(["S", "N", "BOOL", "NULL", "B", "s"]), plain, min_size=2),
    st.builds(lambda tag, v: {tag: v}, st.sampled_from(["S", "N", "BOOL", "NULL"]), plain),
)
holders = st.dictionaries(
    st.sampled_from(["q-a", "q_b", "bad name", ""]),
    st.one_of(st.builds(lambda v: {"S": v}, st.sampled_from(["vol-1", "", "v\x00"])), wire_values),
    max_size=3,
).map(lambda held: {"M": held})


@st.composite
def items(draw: st.DrawFn) -> dict[str, Any]:
    item = {**KEYS, **SERIALIZED}
    if draw(st.booleans()):
        item["sk"] = {"S": "V#" + RECORD["version_token"]}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(NAMES))
        change = draw(st.sampled_from(["replace", "drop", "holders"]))
        if change == "drop":
            item.pop(name, None)
        elif change == "holders":
            item["holders"] = draw(holders)
        else:
            item[name] = draw(st.one_of(wire_values, tricky))
    return item


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(item=st.one_of(items(), items(), st.dictionaries(st.sampled_from(NAMES), wire_values)))
def test_parse_item_agrees_with_the_deserializer_form_it_replaced(item):
    ours, theirs = parse_item(item), ledger_reference.parse_item(item)
    assert ours == theirs
    assert type(ours) is type(theirs)


def test_a_well_formed_item_is_its_record_in_both():
    ours = parse_item({**KEYS, **SERIALIZED})
    assert ours == ledger_reference.parse_item({**KEYS, **SERIALIZED})
    assert ours.size == 4096 and ours.metadata == {"owner": "ops"}  # type: ignore[union-attr]


# `size` / `stored_size` read as int from 38 ASCII digits at most, `metadata` read as a map
# of S members: every edge of those fast paths (more digits than DynamoDB's context holds,
# leading zeros, other digits, a sign, an exponent; members of other types, several or no
# tags, S holding what is not a string), in the fields that take them and in the others.
digits = st.one_of(
    st.text(alphabet="0123456789", min_size=1, max_size=42),
    st.builds(lambda zeros, n: "0" * zeros + str(n), st.integers(30, 45), st.integers(0, 10**9)),
    st.sampled_from(["0", "00", "9" * 38, "1" * 38, "1" * 39, "٣", "²", "-1", "+1", "1e2", ""]),
)
members = st.one_of(
    st.builds(lambda v: {"S": v}, st.one_of(texts, odd)),
    st.builds(lambda v: {"N": v}, digits),
    st.dictionaries(st.sampled_from(["S", "N", "s", "M"]), texts, max_size=2),
    st.sampled_from([{"N": "1", "S": "x"}, {"S": "x", "N": "1"}, {"BOOL": True, "S": "x"}, {}]),
    odd,
)
well_formed = st.builds(lambda v: {"S": v}, st.sampled_from(["ops", "", "a b"]))
string_maps = st.dictionaries(
    st.one_of(st.sampled_from(["owner", "x-amz", "team"]), texts),
    st.one_of(well_formed, well_formed, members),
    max_size=3,
)


@settings(max_examples=400, deadline=None)
@example("4096", "7", "key", {"owner": {"N": "1", "S": "x"}}, "tags")
@example("1" * 39, "7", "key", {"owner": {"S": "x"}}, "tags")
@example("0" * 40 + "5", "٣", "etag", {"owner": {"S": "x", "N": "1"}, "team": {"S": 5}}, "unknown")
@given(
    size=digits,
    stored=st.one_of(digits, numbers),
    other=st.sampled_from(["key", "etag", "volume_id", "unknown"]),
    metadata=st.one_of(string_maps, odd),
    elsewhere=st.sampled_from(["tags", "holders", "unknown", "content_type"]),
)
def test_whole_numbers_and_string_maps_agree_with_the_deserializer_form(
    size, stored, other, metadata, elsewhere
):
    item = {
        **KEYS,
        **SERIALIZED,
        "size": {"N": size},
        "stored_size": {"N": stored},
        "metadata": {"M": metadata},
    }
    for changed in (
        item,
        {**item, other: {"N": size}},
        {**item, elsewhere: {"M": metadata}},
    ):
        ours, theirs = parse_item(changed), ledger_reference.parse_item(changed)
        assert ours == theirs
        assert type(ours) is type(theirs)
