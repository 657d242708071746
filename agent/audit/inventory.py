"""The ledger's state exported for Athena: date-partitioned, gzipped JSON lines in S3.

``s3://<inventory.bucket>/<inventory.prefix>dt=YYYY-MM-DD/<from>-<part>.json.gz``, one row
per version (`ROW_FIELDS`), ``dt`` the day of the export. Each run exports only what
changed since the last one: the volume's journal is the change feed (every new version,
expiry and reordering is a line in it), and the keys it names are read back from the
ledger, so a row is what DynamoDB holds at export time. A version retention forgot gets a
row with state ``expired``. The watermark (the journal position the run read up to) lives
in ``state/inventory.json`` and moves only after every part is in S3; a run that fails
starts again from the same watermark and writes the same object names (`<from>` is that
watermark), so a retry overwrites its own parts instead of duplicating rows.

The table for Athena (`table_ddl`) and example queries are in docs/audit.md.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from agent.lifecycle.context import StateFile
from agent.records import VersionRecord
from agent.storage.journal import Journal, JournalPosition
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = structlog.get_logger("agent.inventory")

WATERMARK_NAME = "inventory.json"
ROWS_PER_PART = 50_000
# column name → Athena/Glue type, in the order of the table definition
ROW_FIELDS: dict[str, str] = {
    "bucket": "string",
    "key": "string",
    "version_id": "string",
    "version_token": "string",
    "size": "bigint",
    "stored_size": "bigint",
    "sha256": "string",
    "event_time": "string",
    "backup_time": "string",
    "state": "string",  # current | noncurrent | deleted | archived | sse-c | expired
    "storage_class": "string",
    "content_type": "string",
    "tags": "map<string,string>",
    "category": "string",  # the `categories:` rule that named it at backup
    "volume_id": "string",
    "exported_at": "string",
}


def state_of(record: VersionRecord, latest: VersionRecord | None) -> str:
    """current: what S3 serves now; noncurrent: an older version; deleted: a delete
    marker, or any version of a key deleted in S3; archived / sse-c: S3 holds it, the
    agent could not read it."""
    if record.unreadable:
        return record.unreadable
    if record.deleted or (latest is not None and latest.deleted):
        return "deleted"
    if latest is not None and latest.version_token == record.version_token:
        return "current"
    return "noncurrent"


def row(record: VersionRecord, state: str, exported_at: datetime) -> dict[str, Any]:
    return {
        "bucket": record.bucket,
        "key": record.key,
        "version_id": record.version_id,
        "version_token": record.version_token,
        "size": record.size,
        "stored_size": record.stored_size,
        "sha256": record.sha256,
        "event_time": record.event_time,
        "backup_time": record.backup_time,
        "state": state,
        "storage_class": record.storage_class,
        "content_type": record.content_type,
        "tags": record.tags or {},
        "category": record.category,
        "volume_id": record.volume_id,
        "exported_at": exported_at.isoformat(),
    }


@dataclass
class InventoryReport:
    keys: int = 0
    rows: int = 0
    parts: list[str] = field(default_factory=list)  # s3:// URIs written


class InventoryExport:
    def __init__(
        self,
        *,
        s3: S3Client,
        ledger: Ledger,
        journal: Journal,
        volume: Volume,
        bucket: str,
        prefix: str,
        clock: Callable[[], datetime] | None = None,
        rows_per_part: int = ROWS_PER_PART,
    ) -> None:
        self.s3 = s3
        self.ledger = ledger
        self.journal = journal
        self.bucket = bucket
        self.prefix = prefix
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rows_per_part = rows_per_part
        self.watermark = StateFile(volume, WATERMARK_NAME)

    def run_once(self) -> InventoryReport:
        start = self._load_watermark()
        end = self.journal.position()
        changed, expired = self._changes(start)
        now = self.clock()
        report = InventoryReport(keys=len(changed))
        rows = self._rows(sorted(changed), expired, now)
        name = f"{start.segment}-{start.offset}" if start else "start"
        part: list[dict[str, Any]] = []
        for exported in rows:
            part.append(exported)
            if len(part) >= self.rows_per_part:
                report.parts.append(self._put(part, now, name, len(report.parts)))
                report.rows += len(part)
                part = []
        if part:
            report.parts.append(self._put(part, now, name, len(report.parts)))
            report.rows += len(part)
        if end is not None:
            self.watermark.save({"segment": end.segment, "offset": end.offset})
        log.info("inventory.exported", keys=report.keys, rows=report.rows, parts=len(report.parts))
        return report

    def _changes(
        self, start: JournalPosition | None
    ) -> tuple[set[tuple[str, str]], list[VersionRecord]]:
        """Keys with a new or reordered version since `start`; versions expired since."""
        changed: set[tuple[str, str]] = set()
        expired: list[VersionRecord] = []
        for line in self.journal.read_since(start):
            kind = line.get("kind")
            if kind is None or kind == "order":
                changed.add((str(line.get("bucket")), str(line.get("key"))))
            elif kind == "expired":
                try:
                    expired.append(VersionRecord.from_dict(line))
                except (KeyError, TypeError, ValueError):
                    continue
        return changed, expired

    def _rows(
        self, keys: list[tuple[str, str]], expired: list[VersionRecord], now: datetime
    ) -> Iterator[dict[str, Any]]:
        live: set[tuple[str, str, str]] = set()
        for bucket, key in keys:
            latest, versions = self.ledger.state(bucket, key)
            for record in versions:
                live.add((record.bucket, record.key, record.version_token))
                yield row(record, state_of(record, latest), now)
        for record in expired:
            identity = (record.bucket, record.key, record.version_token)
            if identity not in live and self.ledger.get_version(*identity) is None:
                yield row(record, "expired", now)

    def _put(self, rows: list[dict[str, Any]], now: datetime, name: str, index: int) -> str:
        text = "".join(
            json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in rows
        )
        key = f"{self.prefix}dt={now.strftime('%Y-%m-%d')}/{name}-{index:05d}.json.gz"
        self.s3.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=gzip.compress(text.encode("utf-8", errors="surrogatepass"), mtime=0),
            ContentType="application/x-ndjson",
            ContentEncoding="gzip",
        )
        return f"s3://{self.bucket}/{key}"

    def _load_watermark(self) -> JournalPosition | None:
        data = self.watermark.load()
        if not data:
            return None
        try:
            return JournalPosition(str(data["segment"]), int(data["offset"]))
        except (KeyError, TypeError, ValueError):
            return None  # unreadable: export everything again (rows carry exported_at)


def table_ddl(bucket: str, prefix: str, table: str = "backup_inventory") -> str:
    """The Athena (Glue) table over the export, partitions projected by date."""
    columns = ",\n".join(f"  `{name}` {kind}" for name, kind in ROW_FIELDS.items())
    location = f"s3://{bucket}/{prefix}"
    return (
        f"CREATE EXTERNAL TABLE IF NOT EXISTS {table} (\n{columns}\n)\n"
        "PARTITIONED BY (`dt` string)\n"
        "ROW FORMAT SERDE 'org.openx.data.jsonserde.JsonSerDe'\n"
        f"LOCATION '{location}'\n"
        "TBLPROPERTIES (\n"
        "  'projection.enabled' = 'true',\n"
        "  'projection.dt.type' = 'date',\n"
        "  'projection.dt.format' = 'yyyy-MM-dd',\n"
        "  'projection.dt.range' = '2020-01-01,NOW',\n"
        f"  'storage.location.template' = '{location}dt=${{dt}}/'\n"
        ");\n"
    )
