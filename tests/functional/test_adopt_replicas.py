"""`backup-agent adopt-volume` with `fleet.replicas: 2` (moto): the adopted volume's records
carry its replica group's hold (docs/fleet.md "A member leaves for good").

vol-a (group 1) is the departed member's volume, adopted by the member on vol-b (group 1);
vol-c is group 2's member. Before: the command's ledger had no replica group, so a version
it recorded named vol-a in no group (read as an item from before replicas: group 1's
reconcile copied it again onto vol-b, and group 1's hold stayed missing), and a version
group 2 had recorded without vol-a's hold was counted "held by another volume" and left
without it.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.cli.agent import main as agent_main
from agent.events import ObjectEvent
from agent.fleet.heartbeat import Heartbeat, Identity
from agent.fleet.registry import Registry
from agent.lifecycle.retention import Retention, RetentionPolicy
from agent.pipeline.backup import Outcome
from agent.runtime.wiring import fleet_identity
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import BUCKET, REGION, TABLE
from tests.support.backed_up import write_config
from tests.support.clock import FakeClock
from tests.support.fleet import group_ledger, member_service, member_volume
from tests.support.lifecycle import created, enable_versioning, put

AT = datetime(2026, 12, 1, 6, tzinfo=UTC)
BASE = f"https://sqs.{REGION}.amazonaws.com/123456789012/backup-events"
ONE, TWO = "backup-events-1", "backup-events-2"


def _events(aws: Any, key: str, count: int) -> list[ObjectEvent]:
    events = []
    for n in range(count):
        body = f"{key} version {n + 1}".encode()
        response = put(aws, key, body)
        at = AT + timedelta(hours=n)
        events.append(created(key, response, len(body), at=at, sequencer=f"{n:04X}"))
    return events


def _item_key(event: ObjectEvent) -> dict[str, Any]:
    return {"pk": {"S": f"{BUCKET}/{event.key}"}, "sk": {"S": "V#" + event.version_token}}


def _adopt(aws: Any, tmp_path: Path, adopted: Volume, adopting: Volume, *, group: int = 1) -> int:
    """Register vol-a's departed member in group 1 and the adopting member in `group`, then
    run the command there (its config: that group's queue, two replicas); its exit code."""
    for name, identity, clock in (
        (ONE, lambda: Identity("i-aaaa", "i-aaaa", "vol-a", "us-east-1a", "1.0"), lambda: AT),
        (f"backup-events-{group}", lambda: fleet_identity(adopting.root.name), utc_now),
    ):
        registry = Registry(aws.dynamodb, TABLE, name)
        Heartbeat(registry, identity, interval_seconds=30, clock=clock).beat()
    config_path = write_config(
        tmp_path / "config.yaml",
        adopting.root,
        queue={"url": f"{BASE}-{group}", "wait_time_seconds": 0},
        fleet={"replicas": 2},
    )
    return agent_main(["adopt-volume", "--config", str(config_path), "--root", str(adopted.root)])


def utc_now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def volumes(tmp_path: Path) -> dict[str, Volume]:
    return {name: member_volume(tmp_path, name) for name in ("vol-a", "vol-b", "vol-c")}


def test_a_version_adopt_records_carries_the_hold_of_the_volume_s_replica_group(
    aws, tmp_path, volumes, capsys
):
    enable_versioning(aws)
    member_a = member_service(aws, volumes["vol-a"], group=ONE)
    older, newer = _events(aws, "docs/report.txt", 2)
    for event in (older, newer):
        assert member_a.process(event).outcome == Outcome.STORED
    # vol-a's member was killed between the older version's journal line and its ledger
    # write (group 2 has not taken it yet); the newer one is recorded and LATEST
    aws.dynamodb.delete_item(TableName=TABLE, Key=_item_key(older))
    capsys.readouterr()

    assert _adopt(aws, tmp_path, volumes["vol-a"], volumes["vol-b"]) == 0

    assert "2 journal records: 1 recorded now, 1 already recorded" in capsys.readouterr().out
    ledger = Ledger(aws.dynamodb, TABLE)
    recorded = ledger.get_version(BUCKET, older.key, older.version_token)
    assert recorded is not None and recorded.holders == {ONE: "vol-a"}
    assert recorded.holder_in(ONE) == "vol-a"  # group 1 holds it: its reconcile copies nothing
    latest = ledger.latest(BUCKET, older.key)  # the older version did not move LATEST back
    assert latest is not None and latest.version_token == newer.version_token


def test_adopt_adds_the_group_s_hold_to_a_version_another_group_recorded(
    aws, tmp_path, volumes, capsys
):
    enable_versioning(aws)
    member_a = member_service(aws, volumes["vol-a"], group=ONE)
    member_c = member_service(aws, volumes["vol-c"], group=TWO)
    lost, held = _events(aws, "docs/report.txt", 2)
    for event in (lost, held):  # group 2 first: the items name vol-c, vol-a's hold added
        assert member_c.process(event).outcome == Outcome.STORED
        assert member_a.process(event).outcome == Outcome.STORED
    # vol-a's member was killed between its journal line and its hold's write for `lost`
    aws.dynamodb.update_item(
        TableName=TABLE,
        Key=_item_key(lost),
        UpdateExpression="REMOVE holders.#g",
        ExpressionAttributeNames={"#g": ONE},
    )
    capsys.readouterr()

    assert _adopt(aws, tmp_path, volumes["vol-a"], volumes["vol-b"]) == 0

    out = capsys.readouterr().out
    assert "2 journal records: 1 recorded now, 1 already recorded, 0 held" in out
    ledger = Ledger(aws.dynamodb, TABLE)
    for event in (lost, held):
        recorded = ledger.get_version(BUCKET, event.key, event.version_token)
        assert recorded is not None and recorded.holders == {ONE: "vol-a", TWO: "vol-c"}


def test_adopt_leaves_a_version_held_by_another_volume_of_the_group_alone(
    aws, tmp_path, volumes, capsys
):
    enable_versioning(aws)
    member_a = member_service(aws, volumes["vol-a"], group=ONE)
    [event] = _events(aws, "docs/report.txt", 1)
    assert member_a.process(event).outcome == Outcome.STORED
    # vol-a's write was lost, and the redelivery went to vol-b (group 1 too), which won
    aws.dynamodb.delete_item(TableName=TABLE, Key=_item_key(event))
    [journalled] = Journal(volumes["vol-a"].journal_dir).read_all()
    redelivered = dataclasses.replace(journalled, volume_id="vol-b")
    assert group_ledger(aws, ONE, volumes["vol-b"]).record(redelivered)
    capsys.readouterr()

    assert _adopt(aws, tmp_path, volumes["vol-a"], volumes["vol-b"]) == 0

    assert "0 recorded now, 0 already recorded, 1 held" in capsys.readouterr().out
    recorded = Ledger(aws.dynamodb, TABLE).get_version(BUCKET, event.key, event.version_token)
    assert recorded is not None and recorded.holders == {ONE: "vol-b"}  # vol-a's: a duplicate


def test_adopt_does_not_record_again_a_version_the_volume_s_retention_expired(
    aws, tmp_path, volumes, capsys
):
    enable_versioning(aws)
    member_a = member_service(aws, volumes["vol-a"], group=ONE)
    expired, kept = _events(aws, "docs/report.txt", 2)
    for event in (expired, kept):
        assert member_a.process(event).outcome == Outcome.STORED
    Retention(  # vol-a's last run: the older version expired (journal note, then its item)
        ledger=group_ledger(aws, ONE, volumes["vol-a"]),
        journal=Journal(volumes["vol-a"].journal_dir),
        policy=RetentionPolicy(keep_last_versions=1),
        buckets=[BUCKET],
        clock=FakeClock(AT + timedelta(days=30)),
        volume_id="vol-a",
    ).run_once()
    ledger = Ledger(aws.dynamodb, TABLE)
    assert ledger.get_version(BUCKET, expired.key, expired.version_token) is None
    capsys.readouterr()

    assert _adopt(aws, tmp_path, volumes["vol-a"], volumes["vol-b"]) == 0

    # the journal's replay forgets the expired version: adopt never sees it
    assert "1 journal records: 0 recorded now, 1 already recorded" in capsys.readouterr().out
    assert ledger.get_version(BUCKET, expired.key, expired.version_token) is None
    assert [r.version_token for r in ledger.versions(BUCKET, kept.key)] == [kept.version_token]


def test_adopt_on_a_member_of_another_replica_group_is_refused(aws, tmp_path, volumes, capsys):
    enable_versioning(aws)
    member_a = member_service(aws, volumes["vol-a"], group=ONE)
    [event] = _events(aws, "docs/report.txt", 1)
    assert member_a.process(event).outcome == Outcome.STORED
    aws.dynamodb.delete_item(TableName=TABLE, Key=_item_key(event))  # a lost ledger write

    # vol-c's member is in group 2: its holds would name vol-a for group 2
    assert _adopt(aws, tmp_path, volumes["vol-a"], volumes["vol-c"], group=2) == 2

    err = capsys.readouterr().err
    assert "volume vol-a belongs to replica group backup-events-1" in err
    assert Ledger(aws.dynamodb, TABLE).get_version(BUCKET, event.key, event.version_token) is None
    [departed] = Registry(aws.dynamodb, TABLE, ONE).members()[0]
    assert departed.state != "stopped"  # nothing done
