"""Stored copies of many small objects, made for the restore section without the queue.

Section 3 needs a volume holding N small copies, their journal lines and their DynamoDB
records, exactly as the agent leaves them. Having the agent back up 10,000 objects through
moto's SQS took 3-4 minutes (~50 objects/s, bound by the endpoint's requests) and measured
nothing section 2 does not already measure on its first `BENCH_RATE_COUNT`. Here the same
store path runs in this process: `Volume.write_copy` (compress, fsync, rename) and the
journal line (`Journal.append`) on a pool of threads, then the ledger's own items (the version
and LATEST) in batches; the S3 GET and the SQS messages are left out, neither of which a
restore reads.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import Config
from agent.order import event_key
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import VERSION_PREFIX, Ledger
from agent.storage.volume import CompressionSettings, StoredCopy, Volume
from bench.data import small_payload
from bench.restore import Copy

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def put_record(
    bucket: str, key: str, at: datetime, etag: str, volume_id: str, stored: StoredCopy
) -> VersionRecord:
    """The record the agent writes for an ObjectCreated:Put at `at` stored as `stored`
    (an unversioned bucket's version token, as the agent makes it)."""
    return VersionRecord(
        bucket=bucket,
        key=key,
        version_token=f"t:{at.strftime('%Y%m%dT%H%M%S.%fZ')}:{etag}",
        order_key=event_key(at, None),
        event_name="ObjectCreated:Put",
        event_time=at.isoformat(),
        backup_time=at.isoformat(),
        volume_id=volume_id,
        etag=etag,
        sha256=stored.sha256,
        size=stored.size,
        stored_size=stored.stored_size,
    )


def seed_small(
    config: Config,
    ledger: Ledger | None,
    bucket: str,
    count: int,
    size: int,
    *,
    threads: int = 8,
    prefix: str = "small/",
) -> list[Copy]:
    """Store `count` distinct objects of `size` bytes as the agent would; their copies.
    The ledger's items go in batches (`write_items`).

    With `ledger` None only the volume and its journal are written (an offline restore)."""
    volume = Volume(config.storage.root)
    marker = volume.read_marker()
    journal = Journal(volume.journal_dir)
    settings = CompressionSettings(level=config.storage.compression_level, threads=1)

    def store(index: int) -> VersionRecord:
        key = f"{prefix}{index:05d}.json"
        data = small_payload(index, size)
        stored = volume.write_copy([data], settings)
        at = T0 + timedelta(milliseconds=index)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        record = put_record(bucket, key, at, etag, marker.volume_id, stored)
        journal.append(record)
        return record

    with ThreadPoolExecutor(threads) as pool:
        records = list(pool.map(store, range(count)))
    if ledger is not None:
        write_items(ledger, records)
    return [Copy(r.sha256 or "", r.size or 0, bucket, r.key) for r in records]


def write_items(ledger: Ledger, records: list[VersionRecord]) -> None:
    """The items `Ledger.record` would write for these fresh keys (each version and its
    LATEST), built by the ledger itself, sent 25 to a BatchWriteItem: moto_server took
    ~15 ms per conditional PutItem on the busy machine, so 10,000 keys one by one took
    minutes. (Only right for keys the table does not hold yet: no conditions.)"""
    items = []
    for record in records:
        items.append(ledger._item(record, VERSION_PREFIX + record.version_token))
        items.append(ledger._latest_item(record))
    for start in range(0, len(items), 25):
        requests: list[Any] = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        while requests:
            answer = ledger._db.batch_write_item(RequestItems={ledger.table: requests})
            requests = list(answer.get("UnprocessedItems", {}).get(ledger.table, []))
