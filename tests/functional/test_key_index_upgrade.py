"""A table written by the previous release (every LATEST indexed under the bucket name
alone) lists and restores after the upgrade, and `backup-agent reindex` and reconcile
move its LATEST items to their shards of the `by-key` index (agent/storage/key_index.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import agent as agent_cli
from agent.cli.restore import main
from agent.config import ReconcileConfig
from agent.lifecycle.context import Pacer
from agent.lifecycle.reconcile import Reconciler
from agent.storage import key_index
from agent.storage.ledger import Ledger
from tests.support.aws import BUCKET, TABLE
from tests.support.backed_up import BackedUp, write_config
from tests.support.lifecycle import make_service

KEYS = ["docs/a.txt", "docs/b.txt", "docs/sub/c.txt", "ünïcødé/✓.csv", "z", "gone.txt"]


@pytest.fixture
def config_path(tmp_path, backup_root) -> Path:
    return write_config(tmp_path / "config.yaml", backup_root)


def restore_cli(config_path: Path, command: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    out, err = io.StringIO(), io.StringIO()
    code = main([command, "--config", str(config_path), *args, "--json"], out=out, err=err)
    assert code == 0, err.getvalue()
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def unsharded_keys(dynamodb: Any) -> list[str]:
    items = dynamodb.query(
        TableName=TABLE,
        IndexName="by-key",
        KeyConditionExpression="gsi_bucket = :b",
        ExpressionAttributeValues={":b": {"S": BUCKET}},
    )["Items"]
    return sorted(i["gsi_key"]["S"] for i in items)


def as_previous_release(dynamodb: Any) -> list[str]:
    """Index every LATEST as the previous release did: `gsi_bucket` = the bucket name."""
    items = dynamodb.scan(TableName=TABLE)["Items"]  # test-side only
    moved = []
    for item in items:
        if item["sk"]["S"] == "LATEST":
            dynamodb.put_item(TableName=TABLE, Item={**item, "gsi_bucket": {"S": BUCKET}})
            moved.append(item["gsi_key"]["S"])
    return sorted(moved)


@pytest.fixture
def bodies(aws, volume) -> dict[str, bytes]:
    backups = BackedUp(aws, volume)
    written = {key: f"body of {key}\n".encode() * 40 for key in KEYS}
    for key, body in written.items():
        backups.put(key, body)
    backups.put("docs/a.txt", b"second version\n" * 40)
    written["docs/a.txt"] = b"second version\n" * 40
    backups.delete("gone.txt")
    del written["gone.txt"]
    assert as_previous_release(aws.dynamodb) == sorted(KEYS)
    return written


def test_a_table_of_the_previous_release_lists_and_restores(aws, bodies, config_path, tmp_path):
    _code, listed = restore_cli(config_path, "list")
    assert [row["key"] for row in listed] == sorted(bodies)
    _code, offline = restore_cli(config_path, "list", "--offline")
    assert [row["key"] for row in offline] == [row["key"] for row in listed]

    _code, rows = restore_cli(config_path, "restore", "--all", "--to", str(tmp_path / "out"))
    files = {row["key"]: row for row in rows if row.get("type") == "file"}
    assert set(files) == set(bodies)
    for key, row in files.items():
        assert Path(row["destination"]).read_bytes() == bodies[key], key


def test_reindex_moves_every_latest_to_its_shard_and_lists_the_same(
    aws, bodies, config_path, capsys
):
    _code, before = restore_cli(config_path, "list", "--deleted")

    assert agent_cli.main(["reindex", "--config", str(config_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["index_migrated"] == len(KEYS)
    assert unsharded_keys(aws.dynamodb) == []
    for key in KEYS:
        item = aws.dynamodb.get_item(
            TableName=TABLE, Key={"pk": {"S": f"{BUCKET}/{key}"}, "sk": {"S": "LATEST"}}
        )["Item"]
        assert item["gsi_bucket"]["S"] == key_index.partition(BUCKET, key)
    _code, after = restore_cli(config_path, "list", "--deleted")
    assert after == before
    assert agent_cli.main(["reindex", "--config", str(config_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["index_migrated"] == 0


def reconciler(aws, config, volume, **settings) -> Reconciler:
    return Reconciler(
        s3=aws.s3,
        ledger=Ledger(aws.dynamodb, TABLE),
        service=make_service(aws, config, volume),
        volume=volume,
        buckets=[BUCKET],
        settings=ReconcileConfig(**settings),
        limiter=Pacer(1000, sleep=lambda s: None),
    )


def test_reconcile_moves_every_latest_to_its_shard_and_a_dry_run_none(aws, bodies, config, volume):
    dry = reconciler(aws, config, volume).run_once(dry_run=True)
    assert dry.index_migrated == 0 and unsharded_keys(aws.dynamodb) == sorted(KEYS)

    report = reconciler(aws, config, volume).run_once()

    assert report.completed and report.failed == 0
    assert report.index_migrated == len(KEYS)
    assert unsharded_keys(aws.dynamodb) == []
    assert [r.key for r in Ledger(aws.dynamodb, TABLE).keys(BUCKET)] == sorted(KEYS)
