"""The ledger's table in in-process moto, and the records the ledger tests write to it.

One place for what tests/unit/test_ledger_record_many.py, test_ledger_holders.py and
tests/reliability/test_ledger_transactions.py each set up: the table (`ledger_table`), a
created-object event (`put_event`) and the record of its stored copy (`stored_version`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.config
from moto import mock_aws

from agent.events import EventKind, ObjectEvent
from agent.records import VersionRecord
from agent.storage.ledger import table_definition
from tests.support.aws import REGION

BUCKET = "company-documents"
TABLE = "backup-agent-objects"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
EMPTY_ETAG = "d41d8cd98f00b204e9800998ecf8427e"
SHA = "ab" * 32


@contextmanager
def ledger_table(*tables: str, config: botocore.config.Config | None = None) -> Iterator[Any]:
    """A DynamoDB client inside `mock_aws` with the ledger's table `TABLE` (and one of the
    same definition for each name in `tables`: an oracle to compare with)."""
    with mock_aws():
        client = boto3.client("dynamodb", region_name=REGION, config=config)
        for name in (TABLE, *tables):
            client.create_table(**{**table_definition(name), "TableName": name})
        yield client


def put_event(
    key: str,
    version_id: str | None,
    sequencer: str,
    kind: EventKind = EventKind.CREATED,
    *,
    delete_marker: bool = False,
) -> ObjectEvent:
    """An ObjectCreated:Put (or, with `kind` REMOVED, an ObjectRemoved:Delete) at T0."""
    created = kind is EventKind.CREATED
    return ObjectEvent(
        kind=kind,
        bucket=BUCKET,
        key=key,
        event_name="ObjectCreated:Put" if created else "ObjectRemoved:Delete",
        event_time=T0,
        version_id=version_id,
        etag=EMPTY_ETAG if created else None,
        size=10 if created else None,
        sequencer=sequencer,
        delete_marker=delete_marker,
    )


def stored_version(
    key: str, version_id: str | None, sequencer: str, *, volume_id: str = "vol-a"
) -> VersionRecord:
    """The record of `put_event(key, version_id, sequencer)` stored on `volume_id`: 10 bytes,
    9 stored, SHA-256 `SHA`."""
    return VersionRecord.for_event(
        put_event(key, version_id, sequencer),
        backup_time=T0,
        volume_id=volume_id,
        sha256=SHA,
        size=10,
        stored_size=9,
    )
