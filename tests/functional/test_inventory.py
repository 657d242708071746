"""The Athena export: what is written equals the ledger, partitioned by day; a second run
writes only what changed; a failed upload is retried from the same watermark."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions
import pytest
import yaml

from agent.audit.inventory import ROW_FIELDS, InventoryExport, row, state_of
from agent.cli import agent as agent_cli
from agent.cli.common import ExitCode
from agent.lifecycle.retention import Retention, RetentionPolicy
from agent.records import VersionRecord
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, QUEUE_URL, REGION, TABLE
from tests.support.aws_hooks import Fault, inject
from tests.support.backed_up import BackedUp

EXPORTS = "company-analytics"
PREFIX = "inventory/"
DAY1 = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
DAY2 = datetime(2026, 12, 2, 6, 0, tzinfo=UTC)


@pytest.fixture
def backups(aws, volume) -> BackedUp:
    aws.s3.create_bucket(Bucket=EXPORTS)
    return BackedUp(aws, volume)


def exporter(aws, volume, at: datetime) -> InventoryExport:
    return InventoryExport(
        s3=aws.s3,
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        volume=volume,
        bucket=EXPORTS,
        prefix=PREFIX,
        clock=lambda: at,
        rows_per_part=3,
    )


def written(aws, day: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows by object key under the export prefix (one day's partition, or all)."""
    prefix = PREFIX + (f"dt={day}/" if day else "")
    found: dict[str, list[dict[str, Any]]] = {}
    for item in aws.s3.list_objects_v2(Bucket=EXPORTS, Prefix=prefix).get("Contents", []):
        body = aws.s3.get_object(Bucket=EXPORTS, Key=item["Key"])["Body"].read()
        found[item["Key"]] = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    return found


def ledger_rows(aws) -> dict[tuple[str, str], str]:
    """(key, version_token) → state, from the ledger itself."""
    ledger = Ledger(aws.dynamodb, TABLE)
    expected = {}
    for latest in ledger.keys(BUCKET):
        current, versions = ledger.state(BUCKET, latest.key)
        for record in versions:
            expected[(record.key, record.version_token)] = state_of(record, current)
    return expected


def test_the_export_round_trips_the_ledger_then_writes_only_changes(aws, volume, backups):
    backups.put("a.txt", b"alpha one")
    backups.put("a.txt", b"alpha two")
    backups.put("b/c.txt", b"see")
    backups.put("gone.txt", b"soon deleted")
    backups.delete("gone.txt")

    report = exporter(aws, volume, DAY1).run_once()

    files = written(aws, "2026-12-01")
    assert len(files) == 2 == len(report.parts)  # 6 rows, 3 a part
    rows = [r for part in files.values() for r in part]
    assert all(list(r) == list(ROW_FIELDS) for r in rows)
    assert {(r["key"], r["version_token"]): r["state"] for r in rows} == ledger_rows(aws)
    assert sorted(r["state"] for r in rows) == [
        "current",  # b/c.txt
        "current",  # a.txt, second
        "deleted",  # gone.txt's stored version: the key is deleted in S3
        "deleted",  # gone.txt's delete marker
        "noncurrent",  # a.txt, first
    ]
    ledger = Ledger(aws.dynamodb, TABLE)
    by_token = {r["version_token"]: r for r in rows}
    for record in ledger.versions(BUCKET, "a.txt"):
        exported = by_token[record.version_token]
        assert exported["sha256"] == record.sha256 and exported["size"] == record.size
        assert exported["stored_size"] == record.stored_size
        assert exported["volume_id"] == record.volume_id == "vol-test"
        assert exported["backup_time"] == record.backup_time
        assert exported["category"] == record.category  # None: no categories configured

    assert exporter(aws, volume, DAY1).run_once().rows == 0  # nothing changed: nothing written
    assert len(written(aws)) == 2

    backups.put("b/c.txt", b"see again")
    second = exporter(aws, volume, DAY2).run_once()

    new = [r for part in written(aws, "2026-12-02").values() for r in part]
    assert {r["key"] for r in new} == {"b/c.txt"} and second.rows == 2
    assert sorted(r["state"] for r in new) == ["current", "noncurrent"]
    latest = {(r["key"], r["version_token"]): r["state"] for r in rows}
    latest.update({(r["key"], r["version_token"]): r["state"] for r in new})
    assert latest == ledger_rows(aws)  # the newest row per version is the ledger's state


def test_a_version_retention_forgot_is_exported_as_expired(aws, volume, backups):
    old = backups.put("k.txt", b"one")
    backups.put("k.txt", b"two")
    exporter(aws, volume, DAY1).run_once()
    retention = Retention(
        ledger=Ledger(aws.dynamodb, TABLE),
        journal=Journal(volume.journal_dir),
        policy=RetentionPolicy(keep_last_versions=1),
        buckets=[BUCKET],
    )
    assert retention.run_once().expired == 1

    exporter(aws, volume, DAY2).run_once()

    [row] = [r for part in written(aws, "2026-12-02").values() for r in part]
    assert row["version_id"] == old and row["state"] == "expired"


def test_a_failed_upload_leaves_the_watermark_and_the_retry_rewrites_the_same_objects(
    aws, volume, backups
):
    for n in range(4):
        backups.put(f"k{n}", b"x" * n)
    failing = [True]
    inject(
        aws.s3,
        Fault(
            "PutObject",
            "AccessDenied",
            status=403,
            when=lambda p: failing[0] and str(p.get("Key", "")).endswith("-00001.json.gz"),
        ),
    )
    with pytest.raises(botocore.exceptions.ClientError):
        exporter(aws, volume, DAY1).run_once()
    failing[0] = False
    assert len(written(aws)) == 1  # the first part went out, the watermark did not move

    report = exporter(aws, volume, DAY1).run_once()

    assert report.rows == 4 and len(written(aws)) == 2  # same names: overwritten, not doubled
    rows = [r for part in written(aws).values() for r in part]
    assert sorted(r["key"] for r in rows) == ["k0", "k1", "k2", "k3"]


def test_the_cli_exports_and_prints_the_athena_table(aws, volume, backups, tmp_path, capsys):
    backups.put("k.txt", b"x")
    path = tmp_path / "config.yaml"
    raw = {
        "aws": {"region": REGION},
        "queue": {"url": QUEUE_URL},
        "buckets": [BUCKET],
        "storage": {"root": str(volume.root), "min_free_bytes": 0},
        "state": {"table": TABLE},
        "logging": {"format": "json", "level": "WARNING"},
        "inventory": {"bucket": EXPORTS, "prefix": PREFIX, "schedule": "1d"},
    }
    path.write_text(yaml.safe_dump(raw))

    assert agent_cli.main(["inventory", "--config", str(path)]) == ExitCode.OK
    assert "1 rows in 1 parts" in capsys.readouterr().out
    assert agent_cli.main(["inventory", "--config", str(path), "--print-table-ddl"]) == 0
    ddl = capsys.readouterr().out
    assert f"LOCATION 's3://{EXPORTS}/{PREFIX}'" in ddl and "PARTITIONED BY (`dt` string)" in ddl
    assert all(f"`{name}`" in ddl for name in ROW_FIELDS)


def test_a_versions_category_is_a_column_of_its_row():
    record = VersionRecord(
        bucket=BUCKET,
        key="invoices/7.pdf",
        version_token="v:v1",
        order_key="2026-12-01T10:00:00",
        event_name="ObjectCreated:Put",
        event_time="2026-12-01T10:00:00+00:00",
        backup_time="2026-12-01T10:00:01+00:00",
        volume_id="vol-test",
        version_id="v1",
        category="finance",
    )
    exported = row(record, "current", DAY1)
    assert exported["category"] == "finance" and list(exported) == list(ROW_FIELDS)
