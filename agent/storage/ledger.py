"""DynamoDB: one item per (bucket, key, version) and a LATEST pointer per key.

Table layout (created by scripts/bootstrap-aws)::

    pk  = "<bucket>/<key>"           partition: one object key
    sk  = "V#<version token>"        one item per version (or tombstone)
        = "LATEST"                   the newest version by sequencer (or event time)
    GSI "by-key": gsi_bucket (hash), gsi_key (range) — only on LATEST items, so
        "keys under a prefix" is a Query, never a Scan.

Every write is conditional: a duplicate delivery is a no-op, and an older event never
replaces the newer LATEST of its key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import botocore.exceptions
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from agent.aws import classify, error_code
from agent.records import VersionRecord

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

LATEST = "LATEST"
VERSION_PREFIX = "V#"
KEY_INDEX = "by-key"

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def object_pk(bucket: str, key: str) -> str:
    return f"{bucket}/{key}"


class Ledger:
    def __init__(self, dynamodb: DynamoDBClient, table: str) -> None:
        self._db = dynamodb
        self.table = table

    # -- writes ----------------------------------------------------------------------

    def record(self, record: VersionRecord) -> bool:
        """Record a version and advance LATEST when it is newer. False if already known.

        A permanent delete of one S3 version moves LATEST only when LATEST is that version:
        deleting an older version leaves the key's current one in place.
        """
        fresh = self._put_version(record)
        self._advance_latest(record)
        return fresh

    def _put_version(self, record: VersionRecord) -> bool:
        item = self._item(record, VERSION_PREFIX + record.version_token)
        try:
            self._db.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise classify(exc, "DynamoDB PutItem") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, "DynamoDB PutItem") from exc
        return True

    def _advance_latest(self, record: VersionRecord) -> None:
        item = self._item(record, LATEST)
        item["gsi_bucket"] = {"S": record.bucket}
        item["gsi_key"] = {"S": record.key}
        condition = "attribute_not_exists(pk) OR order_key < :order"
        values = {":order": {"S": record.order_key}}
        if record.removes_one_version and record.version_id:
            condition = "attribute_not_exists(pk) OR (order_key < :order AND version_id = :v)"
            values[":v"] = {"S": record.version_id}
        try:
            self._db.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "ConditionalCheckFailedException":
                raise classify(exc, "DynamoDB PutItem LATEST") from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, "DynamoDB PutItem LATEST") from exc

    def replace_latest(self, record: VersionRecord, seen_token: str | None) -> bool:
        """Point LATEST at `record` if it still holds `seen_token` (None: no LATEST yet).

        For reconcile, whose records carry no sequencer and so cannot win the order-key
        comparison against an older, sequenced LATEST. False if LATEST moved meanwhile.
        """
        item = self._item(record, LATEST)
        item["gsi_bucket"] = {"S": record.bucket}
        item["gsi_key"] = {"S": record.key}
        condition: dict[str, Any] = {"ConditionExpression": "attribute_not_exists(pk)"}
        if seen_token is not None:
            condition = {
                "ConditionExpression": "version_token = :seen",
                "ExpressionAttributeValues": {":seen": {"S": seen_token}},
            }
        return self._conditional("PutItem LATEST", self._db.put_item, Item=item, **condition)

    def delete_version(self, record: VersionRecord) -> None:
        """Forget one version item (retention). LATEST is never touched here."""
        self._conditional(
            "DeleteItem",
            self._db.delete_item,
            Key=self._key(record.bucket, record.key, VERSION_PREFIX + record.version_token),
        )

    def delete_latest(self, bucket: str, key: str, expected_token: str) -> bool:
        """Forget a key's LATEST only if it still points at `expected_token`."""
        return self._conditional(
            "DeleteItem LATEST",
            self._db.delete_item,
            Key=self._key(bucket, key, LATEST),
            ConditionExpression="version_token = :seen",
            ExpressionAttributeValues={":seen": {"S": expected_token}},
        )

    def _conditional(self, what: str, call: Any, **kwargs: Any) -> bool:
        try:
            call(TableName=self.table, **kwargs)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) == "ConditionalCheckFailedException":
                return False
            raise classify(exc, "DynamoDB " + what) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise classify(exc, "DynamoDB " + what) from exc
        return True

    def _key(self, bucket: str, key: str, sk: str) -> dict[str, Any]:
        return {"pk": {"S": object_pk(bucket, key)}, "sk": {"S": sk}}

    def _item(self, record: VersionRecord, sk: str) -> dict[str, Any]:
        item = {k: _serializer.serialize(v) for k, v in record.to_dict().items()}
        item["pk"] = {"S": object_pk(record.bucket, record.key)}
        item["sk"] = {"S": sk}
        return item

    # -- reads -----------------------------------------------------------------------

    def get_version(self, bucket: str, key: str, version_token: str) -> VersionRecord | None:
        return self._get(bucket, key, VERSION_PREFIX + version_token)

    def latest(self, bucket: str, key: str) -> VersionRecord | None:
        return self._get(bucket, key, LATEST)

    def versions(self, bucket: str, key: str) -> list[VersionRecord]:
        """Every version and tombstone of a key, oldest first (by sequencer/time)."""
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :v)",
            ExpressionAttributeValues={
                ":pk": {"S": object_pk(bucket, key)},
                ":v": {"S": VERSION_PREFIX},
            },
            ConsistentRead=True,
        )
        return sorted((_record(i) for i in items), key=lambda r: r.order_key)

    def keys(self, bucket: str, prefix: str = "") -> Iterator[VersionRecord]:
        """LATEST of every key under `prefix`, in key order (a Query on the key index)."""
        condition = "gsi_bucket = :b"
        values: dict[str, Any] = {":b": {"S": bucket}}
        if prefix:
            condition += " AND begins_with(gsi_key, :p)"
            values[":p"] = {"S": prefix}
        for item in self._query(
            IndexName=KEY_INDEX,
            KeyConditionExpression=condition,
            ExpressionAttributeValues=values,
        ):
            yield _record(item)

    def _get(self, bucket: str, key: str, sk: str) -> VersionRecord | None:
        try:
            response = self._db.get_item(
                TableName=self.table,
                Key={"pk": {"S": object_pk(bucket, key)}, "sk": {"S": sk}},
                ConsistentRead=True,
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB GetItem") from exc
        item = response.get("Item")
        return _record(item) if item else None

    def _query(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(TableName=self.table, **kwargs):
                yield from page.get("Items", [])
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query") from exc


def _record(item: dict[str, Any]) -> VersionRecord:
    return VersionRecord.from_dict({k: _deserializer.deserialize(v) for k, v in item.items()})


def table_definition(table: str) -> dict[str, Any]:
    """CreateTable arguments (used by bootstrap and tests)."""
    return {
        "TableName": table,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "gsi_bucket", "AttributeType": "S"},
            {"AttributeName": "gsi_key", "AttributeType": "S"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": KEY_INDEX,
                "KeySchema": [
                    {"AttributeName": "gsi_bucket", "KeyType": "HASH"},
                    {"AttributeName": "gsi_key", "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }
