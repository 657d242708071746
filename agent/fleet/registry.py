"""The fleet's register in the ledger's table: each member's item, written and read.

One PutItem per heartbeat (the agent's role has PutItem on the table), one Query for the
whole fleet (its partition holds one small item per member).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import structlog

from agent.aws import classify, dynamodb_serializer
from agent.fleet.member import ADOPTED_PREFIX, MEMBER_PREFIX, BadMember, Member, fleet_pk
from agent.storage.item_values import item_values

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = structlog.get_logger("agent.fleet")


class Registry:
    def __init__(self, dynamodb: DynamoDBClient, table: str, queue_name: str) -> None:
        self._db = dynamodb
        self.table = table
        self.pk = fleet_pk(queue_name)

    def announce(self, member: Member) -> None:
        """Write (or overwrite) the member's item: registration and heartbeat alike."""
        serializer = dynamodb_serializer()
        item = {k: serializer.serialize(_storable(v)) for k, v in member.to_dict().items()}
        item["pk"] = {"S": self.pk}
        item["sk"] = {"S": MEMBER_PREFIX + member.member_id}
        try:
            self._db.put_item(TableName=self.table, Item=item)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB PutItem fleet member") from exc

    def members(self) -> tuple[list[Member], list[str]]:
        """Every member, by id, and a line per item that is not a member."""
        members: list[Member] = []
        problems: list[str] = []
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :m)",
                ExpressionAttributeValues={":pk": {"S": self.pk}, ":m": {"S": MEMBER_PREFIX}},
                ConsistentRead=True,
            ):
                for item in page.get("Items", []):
                    values = item_values(item)  # as the ledger reads its items
                    try:
                        members.append(Member.from_dict(values))
                    except BadMember as exc:
                        log.warning("fleet.bad_member_item", sk=values.get("sk"), problem=str(exc))
                        problems.append(str(exc))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query fleet") from exc
        return sorted(members, key=lambda m: m.member_id), problems

    def record_adoption(self, volume_id: str, member_id: str, root: str, at: datetime) -> None:
        """`member_id` serves `volume_id` (attached at `root`) from now on."""
        item = {
            "pk": {"S": self.pk},
            "sk": {"S": ADOPTED_PREFIX + volume_id},
            "volume_id": {"S": volume_id},
            "member_id": {"S": member_id},
            "root": {"S": root},
            "adopted": {"S": at.isoformat()},
        }
        try:
            self._db.put_item(TableName=self.table, Item=item)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB PutItem fleet adoption") from exc

    def adoptions(self) -> dict[str, str]:
        """Volume id → the member that adopted it."""
        found: dict[str, str] = {}
        paginator = self._db.get_paginator("query")
        try:
            for page in paginator.paginate(
                TableName=self.table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :a)",
                ExpressionAttributeValues={":pk": {"S": self.pk}, ":a": {"S": ADOPTED_PREFIX}},
                ConsistentRead=True,
            ):
                for item in page.get("Items", []):
                    volume = item.get("volume_id", {}).get("S")
                    member = item.get("member_id", {}).get("S")
                    if isinstance(volume, str) and isinstance(member, str):
                        found[volume] = member
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise classify(exc, "DynamoDB Query fleet") from exc
        return found

    def holders(self) -> dict[str, Member]:
        """Volume id → the member serving it: the one that adopted it, else the one
        writing to it (the latest heartbeat wins)."""
        members = self.members()[0]
        by_id = {member.member_id: member for member in members}
        found: dict[str, Member] = {}
        for member in members:
            seen = found.get(member.volume_id)
            if seen is None or member.heartbeat > seen.heartbeat:
                found[member.volume_id] = member
        for volume_id, member_id in self.adoptions().items():
            if member_id in by_id:
                found[volume_id] = by_id[member_id]
        return found


def _storable(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(repr(value))
    return value
