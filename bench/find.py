"""Section 6: `find` over many records, online (the ledger's key index) and offline (a journal).

The records are the items `Ledger.record` writes (a version and its LATEST) and one journal
segment, as the agent leaves them; the pipeline's own speed is sections 1-2. What is timed
is the search alone.

Online, the pages of the key index come from `IndexPages`, a stand-in for DynamoDB's Query
that serves the LATEST items from memory in key order, 1 MB a page, as DynamoDB does:
moto_server's Query is far too slow to measure the agent (one Query of 1,000 keys took
57 s on the 2-core machine of docs/benchmarks.md). The figure is therefore the agent's own
cost (paging, deserialising, the filter); real DynamoDB adds its service time, about 100
pages of 1 MB for 100,000 keys of ~1 KB. `BENCH_FIND_ENDPOINT=1` runs the searches against
the endpoint too (keep BENCH_FIND_RECORDS small).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from boto3.dynamodb.types import TypeSerializer

from agent import order
from agent.records import VersionRecord
from agent.restore.find import Filter, Scan, rows
from agent.restore.source import JournalSource, LedgerSource, RestoreSource
from agent.storage import key_index
from agent.storage.journal import Journal
from agent.storage.ledger import LATEST, VERSION_PREFIX, Ledger, object_pk

BUCKET = "bench-find"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
TYPES = ("application/pdf", "image/jpeg", "text/csv", "application/json")
TEAMS = ("finance", "marketing", "legal", "ops", "hr")

# The budget `find` answers within on this benchmark's 100,000 records (docs/benchmarks.md).
ONLINE_BUDGET_S = 45.0  # the agent's side of a keyword or tag over the whole bucket
OFFLINE_BUDGET_S = 60.0  # the journal read and replayed, then the same search

_serializer = TypeSerializer()


def record(index: int) -> VersionRecord:
    """Record `index`: ten departments, one of four types, one of five teams."""
    at = T0 + timedelta(seconds=37 * index)
    key = f"dept-{index % 10}/{at:%Y/%m}/{index:06d}-{'invoice' if index % 7 == 0 else 'doc'}"
    sequencer = f"{index:016X}"
    return VersionRecord(
        bucket=BUCKET,
        key=key + (".pdf" if index % 4 == 0 else ".dat"),
        version_token=f"v:v{index}",
        order_key=order.event_key(at, sequencer),
        event_name="ObjectCreated:Put",
        event_time=at.isoformat(),
        backup_time=(at + timedelta(seconds=1)).isoformat(),
        volume_id="vol-bench-find",
        version_id=f"v{index}",
        sequencer=sequencer,
        sha256=f"{index:064x}",
        size=1000 + (index * 7919) % 5_000_000,
        stored_size=1000,
        content_type=TYPES[index % len(TYPES)],
        metadata={},
        tags={"team": TEAMS[index % len(TEAMS)]},
    )


def _items(rec: VersionRecord) -> list[dict[str, Any]]:
    body = {k: _serializer.serialize(v) for k, v in rec.to_dict().items()}
    pk = {"S": object_pk(rec.bucket, rec.key)}
    version = {**body, "pk": pk, "sk": {"S": VERSION_PREFIX + rec.version_token}}
    latest = {**body, "pk": pk, "sk": {"S": LATEST}, **key_index.index_fields(rec.bucket, rec.key)}
    return [version, latest]


def write_table(dynamodb: Any, table: str, count: int) -> None:
    batch: list[dict[str, Any]] = []
    for index in range(count):
        batch += [{"PutRequest": {"Item": item}} for item in _items(record(index))]
        if len(batch) >= 24 or index == count - 1:
            pending: dict[str, Any] = {table: batch}
            while pending:
                pending = dynamodb.batch_write_item(RequestItems=pending).get(
                    "UnprocessedItems", {}
                )
            batch = []


def write_journal(directory: Path, count: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "2026-01-01.jsonl", "w", encoding="utf-8") as segment:
        for index in range(count):
            segment.write(json.dumps(record(index).to_dict(), separators=(",", ":")) + "\n")


@dataclass(frozen=True)
class Timing:
    seconds: float
    keys: int
    matches: int


def timed(source: RestoreSource, only: Filter, *, prefix: str = "") -> Timing:
    scan = Scan()
    start = time.perf_counter()
    found = sum(1 for _ in rows(source, [BUCKET], prefix=prefix, only=only, scan=scan))
    return Timing(time.perf_counter() - start, scan.keys, found)


SEARCHES = (
    ("keyword 'invoice', whole bucket", Filter.build(keyword="invoice"), ""),
    ("glob 'dept-3/2026/0*', a literal head", Filter.build(keyword="dept-3/2026/0*"), ""),
    (
        "tag team=legal + type application/pdf",
        Filter.build(tags=["team=legal"], content_type="application/pdf"),
        "",
    ),
    ("prefix dept-5/ + size >= 4 MB", Filter.build(min_size=4_000_000), "dept-5/"),
)


def ledger_source(dynamodb: Any, table: str) -> LedgerSource:
    return LedgerSource(Ledger(dynamodb, table))


PAGE_BYTES = 1 << 20  # DynamoDB: a Query page holds at most 1 MB of items


class IndexPages:
    """What the ledger asks of DynamoDB for `find` (a Query per partition of the sharded key
    index, agent/storage/key_index.py), from memory."""

    def __init__(self, count: int) -> None:
        latest = [_items(record(index))[1] for index in range(count)]
        self.partitions: dict[str, list[tuple[dict[str, Any], int]]] = {}
        for item in sorted(latest, key=lambda item: item["gsi_key"]["S"]):
            pages = self.partitions.setdefault(item["gsi_bucket"]["S"], [])
            pages.append((item, len(json.dumps(item))))

    def query(self, **request: Any) -> dict[str, Any]:
        """One page of one partition, as DynamoDB answers a Query of the index: at most
        PAGE_BYTES of items after `ExclusiveStartKey`, and a `LastEvaluatedKey` (the last
        item's key attributes) when more remain."""
        assert request.get("IndexName"), "find reads the key index only"
        values = request["ExpressionAttributeValues"]
        partition = values[":b"]["S"]
        prefix = values.get(":p", {}).get("S", "")
        after = values.get(":a", {}).get("S")
        start = request.get("ExclusiveStartKey")
        resume = start["gsi_key"]["S"] if start else None
        page: list[dict[str, Any]] = []
        size = 0
        for item, item_size in self.partitions.get(partition, []):
            key = item["gsi_key"]["S"]
            if not key.startswith(prefix) or (after is not None and key <= after):
                continue
            if resume is not None and key <= resume:
                continue
            if page and size + item_size > PAGE_BYTES:
                last = page[-1]
                return {
                    "Items": page,
                    "LastEvaluatedKey": {name: last[name] for name in INDEX_KEY_ATTRIBUTES},
                }
            page.append(item)
            size += item_size
        return {"Items": page}


# The key attributes of an item of the by-key index: the index's, then the table's.
INDEX_KEY_ATTRIBUTES = ("gsi_bucket", "gsi_key", "pk", "sk")


def pages_source(count: int) -> LedgerSource:
    return LedgerSource(Ledger(IndexPages(count), "bench-find"))  # type: ignore[arg-type]


def journal_source(directory: Path) -> tuple[JournalSource, float]:
    start = time.perf_counter()
    source = JournalSource(Journal(directory))
    return source, time.perf_counter() - start
