"""`agent.storage.ledger.parse_item` as it was before issue 19's fast path (agent/storage/
ledger.py at aa0b8d3, boto3's `TypeDeserializer` for every attribute): the oracle
tests/unit/test_ledger_parse_item.py compares today's `parse_item` with. Kept as it was, so
that a change to agent/storage/ledger.py cannot change both."""

from __future__ import annotations

from typing import Any

from boto3.dynamodb.types import TypeDeserializer

from agent.records import Rejection, VersionRecord, digest_named, validated
from agent.storage.ledger import LATEST, VERSION_PREFIX, _key_text, object_pk


def parse_item(item: Any) -> VersionRecord | Rejection:
    pk, sk = _key_text(item, "pk"), _key_text(item, "sk")
    where = f"{pk} {sk}"
    deserializer = TypeDeserializer()
    try:
        data = {k: deserializer.deserialize(v) for k, v in item.items()}
    except Exception:
        return Rejection("dynamodb", where, "an attribute DynamoDB's types cannot hold")
    record = validated(data)
    if isinstance(record, str):
        return Rejection("dynamodb", where, record, digest_named(data))
    if pk != object_pk(record.bucket, record.key) or sk not in (
        LATEST,
        VERSION_PREFIX + record.version_token,
    ):
        return Rejection("dynamodb", where, "pk and sk do not name this record")
    return record
