"""Rebuild the DynamoDB table from the volume's journal (`backup-agent reindex`).

Replays every journal record through `Ledger.record`, whose conditional writes make
this safe to repeat and safe beside a running agent: a version already known is left
alone, and LATEST is what agent/history.py derives from the records. Then each bucket's
LATEST items an older release indexed under the bucket name alone are moved to their
shard of the key index (`Ledger.migrate_key_index`). The table is
created first (from `ledger.table_definition`) when it is missing, e.g. after it was
deleted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import botocore.exceptions
import structlog

from agent.aws import error_code
from agent.records import Rejection, VersionRecord
from agent.storage.ledger import Ledger, table_definition

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = structlog.get_logger("agent.reindex")


@dataclass
class ReindexReport:
    table_created: bool = False
    records: int = 0
    added: int = 0  # versions the table did not know
    index_migrated: int = 0  # LATEST items moved to their key-index shard
    rejected: list[Rejection] = field(default_factory=list)  # items read back and skipped

    @property
    def known(self) -> int:
        return self.records - self.added


def ensure_table(dynamodb: DynamoDBClient, table: str) -> bool:
    """Create the table when missing and wait until it is active; True if created."""
    try:
        dynamodb.describe_table(TableName=table)
        return False
    except botocore.exceptions.ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
    dynamodb.create_table(**table_definition(table))
    dynamodb.get_waiter("table_exists").wait(TableName=table)
    log.info("reindex.table_created", table=table)
    return True


def reindex(
    records: Iterable[VersionRecord], dynamodb: DynamoDBClient, table: str, *, workers: int = 4
) -> ReindexReport:
    """Write every record into the table (creating it first if needed)."""
    report = ReindexReport(table_created=ensure_table(dynamodb, table))
    ledger = Ledger(dynamodb, table)
    lock = threading.Lock()
    buckets: set[str] = set()

    def write(record: VersionRecord) -> None:
        fresh = ledger.record(record)
        with lock:
            buckets.add(record.bucket)
            report.records += 1
            report.added += int(fresh)

    with ThreadPoolExecutor(workers, thread_name_prefix="reindex") as pool:
        pending: set[Future[None]] = set()
        for record in records:
            if len(pending) >= workers * 4:  # bounded: the journal may be huge
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    future.result()
            pending.add(pool.submit(write, record))
        for future in pending:
            future.result()
    for bucket in sorted(buckets):
        report.index_migrated += ledger.migrate_key_index(bucket)
    report.rejected = ledger.rejections.all()
    log.info(
        "reindex.finished",
        table=table,
        records=report.records,
        added=report.added,
        index_migrated=report.index_migrated,
    )
    return report
