"""A DynamoDB item (wire format) as Python values, the way the agent reads its items.

Exactly boto3's `TypeDeserializer` on every attribute (same values, same exceptions for a
value it refuses), with a value of one member S, N, BOOL or NULL read here, without the
deserializer's lookup of a method by name per attribute (a third of `parse_item`, issue
19); so is an M of S members only (a record's `metadata`), and, for the attributes named in
`whole_numbers`, a whole number of at most 38 ASCII digits, as the int a caller would take
from the Decimal (the Decimal's context refuses no such number). Anything else (L, sets, B,
other M, a malformed value) goes to the deserializer itself. The ledger's records
(`agent.storage.ledger.parse_item`) and the fleet registry's member items take it.
tests/unit/test_item_values.py compares it with the deserializer;
tests/unit/test_ledger_parse_item.py compares `parse_item` with its previous form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.aws import dynamodb_deserializer, dynamodb_number


def item_values(
    item: Mapping[str, Any], whole_numbers: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """`item`'s attributes as Python values (S: str, N: Decimal, or int for a whole number
    in `whole_numbers`, BOOL, NULL: None, ...)."""
    number = dynamodb_number()
    deserialize = dynamodb_deserializer().deserialize
    data: dict[str, Any] = {}
    for name, value in item.items():
        if value.__class__ is dict and len(value) == 1:
            if "S" in value:
                data[name] = value["S"]
                continue
            if "N" in value:
                text = value["N"]
                if name in whole_numbers and _is_digits(text):
                    data[name] = int(text)
                else:
                    data[name] = number(text)
                continue
            if "BOOL" in value:
                data[name] = value["BOOL"]
                continue
            if "NULL" in value:
                data[name] = None
                continue
            if "M" in value:
                strings = _strings_map(value["M"])
                if strings is not None:
                    data[name] = strings
                    continue
        data[name] = deserialize(value)
    return data


def _is_digits(text: Any) -> bool:
    """A whole number DynamoDB's Decimal context reads exactly (38 digits, exponent 0)."""
    return text.__class__ is str and len(text) <= 38 and text.isascii() and text.isdigit()


def _strings_map(members: Any) -> dict[str, Any] | None:
    """An M whose members are each one S, as the deserializer reads it; None otherwise."""
    if members.__class__ is not dict:
        return None
    strings: dict[str, Any] = {}
    for key, member in members.items():
        if member.__class__ is not dict or len(member) != 1 or "S" not in member:
            return None
        strings[key] = member["S"]
    return strings
