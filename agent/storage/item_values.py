"""A DynamoDB item (wire format) as Python values, the way the agent reads its items.

Exactly boto3's `TypeDeserializer` on every attribute (same values, same exceptions for a
value it refuses), with a value of one member S, N, BOOL or NULL read here, without the
deserializer's lookup of a method by name per attribute; anything else (M, L, sets, B, a
malformed value) goes to the deserializer itself. The same reading as the ledger's
(`agent.storage.ledger._attributes`, which its records take); the fleet registry's member
items take this one. tests/unit/test_item_values.py compares it with the deserializer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.aws import dynamodb_deserializer, dynamodb_number


def item_values(item: Mapping[str, Any]) -> dict[str, Any]:
    """`item`'s attributes as Python values (S: str, N: Decimal, BOOL, NULL: None, ...)."""
    number = dynamodb_number()
    data: dict[str, Any] = {}
    for name, value in item.items():
        if value.__class__ is dict and len(value) == 1:
            if "S" in value:
                data[name] = value["S"]
                continue
            if "N" in value:
                data[name] = number(value["N"])
                continue
            if "BOOL" in value:
                data[name] = value["BOOL"]
                continue
            if "NULL" in value:
                data[name] = None
                continue
        data[name] = dynamodb_deserializer().deserialize(value)
    return data
