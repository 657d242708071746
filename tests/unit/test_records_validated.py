"""`records.validated`'s fast path (issue 19: a journal replay was ~90 % validation) is
exactly as strict as the form it replaced (tests/support/records_reference.py): on random
records and on well-formed records mutated field by field, both accept or both reject, with
the same reason, and an accepted record is the same record, holders included."""

from __future__ import annotations

import types
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent import records
from agent.events import MAX_KEY_BYTES
from tests.support import records_reference
from tests.support.record_fields import WELL_FORMED

FIELDS = (
    "bucket",
    "key",
    "version_token",
    "order_key",
    "event_name",
    "event_time",
    "backup_time",
    "volume_id",
    "deleted",
    "delete_marker",
    "version_id",
    "sequencer",
    "etag",
    "sha256",
    "size",
    "stored_size",
    "unreadable",
    "storage_class",
    *records.OBJECT_ATTRIBUTES,
    "category",
    "holders",
    "kind",  # not a field: ignored
)


class Text(str):
    """A str subclass: isinstance(…, str) holds, `type(…) is str` does not."""


def texts() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(max_size=12),
        st.text(alphabet=st.sampled_from("ab\x00.-_:/Z+é\ud800"), max_size=12),
        st.sampled_from(
            [
                "",
                "\x00",
                "a" * records.MAX_TEXT,
                "a" * (records.MAX_TEXT + 1),
                "é" * (MAX_KEY_BYTES // 2),
                "é" * (MAX_KEY_BYTES // 2 + 1),
                "\ud800" * (MAX_KEY_BYTES // 3 + 1),
                "k" * (MAX_KEY_BYTES + 1),
                "k" * (MAX_KEY_BYTES // 4 + 1),
                "\U0001f600" * (MAX_KEY_BYTES // 4),
                "\U0001f600" * (MAX_KEY_BYTES // 4 + 1),
                "2026-11-01T09:00:00Z",
                "2026-11-01 09:00",
                "2026-11-01T09:00:00-14:00",
                "0001-01-01T00:00:00+01:00",
                "9999-12-31T23:59:59-01:00",
                " 2026-11-01T09:00:00Z ",
                "2026-13-01T09:00:00Z",
                "ObjectRemoved:DeleteMarkerCreated",
                "ReconcileDeleteMarker",
                "2:20261101T090000:e002000",
                "1:old-order-key",
                "0" * 64,
                "F" * 64,
            ]
        ),
        st.builds(Text, st.sampled_from(["bench-small", "x\x00", "2026-11-01T09:00:00Z"])),
    )


def values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-2, max_value=records.MAX_SIZE + 2),
        st.sampled_from([0, records.MAX_SIZE, records.MAX_SIZE + 1, -1, 1 << 80]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([Decimal("4096"), Decimal("1.5"), Decimal("NaN"), Decimal("-1")]),
        texts(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(texts(), inner, max_size=12),
        ),
        max_leaves=12,
    )


def holders() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.dictionaries(
            st.sampled_from(["q-a", "q_b", "bad name", "", "q\x00"]),
            st.sampled_from(["vol-1", "", "v\x00", 5]),
            max_size=3,
        ),
        values(),
    )


def attribute_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(
            [
                "text/plain",
                "Tue, 01 Jan 2030 00:00:00 GMT",
                "not a date",
                "a\nb",
                "ü",
                "\u20ac",
                {"k": "v"},
                {"bad key": "v"},
                {"k": "\u20ac"},
                {f"t{i}": "v" for i in range(11)},
                {"": "v"},
                {"k" * 129: "v"},
            ]
        ),
        values(),
    )


def same(data: Any) -> None:
    new = records.validated(data)
    old = records_reference.validated(data)
    assert type(new) is type(old), (new, old)
    assert new == old
    if isinstance(new, records.VersionRecord):
        assert isinstance(old, records.VersionRecord)
        assert new.to_dict() == old.to_dict()  # holders too (not part of ==)
        for name in ("size", "stored_size", "deleted", "delete_marker"):
            assert type(getattr(new, name)) is type(getattr(old, name))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELDS), values(), max_size=len(FIELDS)))
def test_random_records_are_judged_alike(data: dict[str, Any]) -> None:
    same(data)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.tuples(st.sampled_from(FIELDS), values()), max_size=3),
    st.lists(st.sampled_from(FIELDS), max_size=2),
    st.lists(st.tuples(st.sampled_from(records.OBJECT_ATTRIBUTES), attribute_values()), max_size=3),
    holders(),
    st.booleans(),
)
def test_mutated_records_are_judged_alike(
    changes: list[tuple[str, Any]],
    removed: list[str],
    attributes: list[tuple[str, Any]],
    holder_map: Any,
    as_mapping: bool,
) -> None:
    data: dict[str, Any] = dict(WELL_FORMED)
    data.update(changes)
    data.update(attributes)
    for name in removed:
        data.pop(name, None)
    if holder_map is not None:
        data["holders"] = holder_map
    same(types.MappingProxyType(data) if as_mapping else data)


@given(st.sampled_from(FIELDS), texts())
def test_every_text_in_every_field_is_judged_alike(name: str, text: Any) -> None:
    same({**WELL_FORMED, name: text})


def test_not_a_mapping_and_the_well_formed_record() -> None:
    for data in ([], "x", None, 5, WELL_FORMED):
        same(data)
    for length in range(MAX_KEY_BYTES // 4 - 1, MAX_KEY_BYTES + 2):  # the key's byte bound
        for char in ("k", "\u00e9", "\u20ac", "\U0001f600", "\ud800"):
            same({**WELL_FORMED, "key": char * length})
    assert isinstance(records.validated(WELL_FORMED), records.VersionRecord)
    assert records.validated({**WELL_FORMED, "size": True}) == "size is not a whole number"
    assert records.validated({**WELL_FORMED, "deleted": 1}) == "deleted is not true or false"
    assert records.validated({**WELL_FORMED, "etag": "a\x00"}) == "etag holds a NUL"
