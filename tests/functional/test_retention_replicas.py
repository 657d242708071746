"""Retention with `fleet.replicas: 2` (moto): every holder expires its own copy.

Two replica groups (one member each, volumes vol-a and vol-b) hold every version of a key.
Before: whichever member's retention ran first deleted the shared version items, so the
other member's retention never saw them: its journal never recorded the expiry and its
gc never freed its copies (a disk leak), while the ledger no longer listed copies that
exist. Now each member journals its expiry and releases its own hold; the item (and a
fully expired key's LATEST) goes with the last holder, in any order (docs/fleet.md
"Replicas").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.lifecycle.gc import GarbageCollector
from agent.lifecycle.retention import Retention, RetentionPolicy
from agent.operations.iam import policy_document
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.functional.test_fleet_replicas import group_config
from tests.support.aws import BUCKET, TABLE
from tests.support.clock import FakeClock
from tests.support.fleet import two_members
from tests.support.iam import Recorder, checks, matching_statements
from tests.support.lifecycle import created, deleted, enable_versioning, put

AT = datetime(2026, 11, 30, 12, tzinfo=UTC)
KEY = "docs/report.txt"
GROUPS = {"vol-a": "backup-events-1", "vol-b": "backup-events-2"}


def _ledger(aws: Any, volume_id: str) -> Ledger:
    return Ledger(aws.dynamodb, TABLE, group=GROUPS[volume_id], volume_id=volume_id)


def _held_twice(aws: Any, tmp_path: Path, *, then_delete: bool = False) -> dict[str, Volume]:
    """Three versions of KEY (and a delete marker on top, if asked), each backed up by
    both members, as the fan-out delivers every event to both groups."""
    enable_versioning(aws)
    pair = two_members(aws, tmp_path, ("vol-a", "vol-b"), groups=(GROUPS["vol-a"], GROUPS["vol-b"]))
    volumes = {volume.root.name: volume for volume, _ in pair}
    members = [service for _, service in pair]
    events = []
    for n in range(3):
        body = f"version {n + 1}".encode()
        response = put(aws, KEY, body)
        at = AT + timedelta(hours=n)
        events.append(created(KEY, response, len(body), at=at, sequencer=f"{n:04X}"))
    if then_delete:
        marker = aws.s3.delete_object(Bucket=BUCKET, Key=KEY)["VersionId"]
        events.append(deleted(KEY, marker, at=AT + timedelta(hours=3), sequencer="0010"))
    for event in events:
        for member in members:
            member.process(event)
    versions = Ledger(aws.dynamodb, TABLE).versions(BUCKET, KEY)
    assert all(sorted(r.holder_volumes()) == ["vol-a", "vol-b"] for r in versions)
    return volumes


def _retention(aws: Any, volumes: dict[str, Volume], name: str, **rules: Any) -> Retention:
    return Retention(
        ledger=_ledger(aws, name),
        journal=Journal(volumes[name].journal_dir),
        policy=RetentionPolicy(**rules),
        buckets=[BUCKET],
        clock=FakeClock(AT + timedelta(days=30)),
        volume_id=name,
    )


def _expired_notes(volume: Volume) -> list[str]:
    lines = []
    for path in sorted(volume.journal_dir.glob("*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return sorted(line["version_token"] for line in lines if line.get("kind") == "expired")


def _collect(volume: Volume) -> int:
    return (
        GarbageCollector(
            volume=volume,
            journal=Journal(volume.journal_dir),
            grace_period=timedelta(hours=1),
            clock=FakeClock(datetime.now(UTC) + timedelta(hours=2)),
        )
        .run_once()
        .removed
    )


def _interleaved(aws: Any, first: Retention, second: Retention) -> Callable[[], None]:
    """`first` runs; `second` runs whole between first's first release being built and
    sent (its read of the holders is stale by then)."""
    ran: list[bool] = []

    def second_in_between(**_: Any) -> None:
        if not ran:
            ran.append(True)
            second.run_once()

    def run() -> None:
        for operation in ("UpdateItem", "DeleteItem"):
            aws.dynamodb.meta.events.register(
                f"provide-client-params.dynamodb.{operation}", second_in_between
            )
        first.run_once()
        assert ran == [True]

    return run


ORDERS = ["a-then-b", "b-then-a", "b-inside-a", "a-inside-b"]


def _run(aws: Any, volumes: dict[str, Volume], order: str, **rules: Any) -> None:
    a, b = (_retention(aws, volumes, name, **rules) for name in ("vol-a", "vol-b"))
    if order == "a-then-b":
        a.run_once()
        b.run_once()
    elif order == "b-then-a":
        b.run_once()
        a.run_once()
    elif order == "b-inside-a":
        _interleaved(aws, a, b)()
    else:
        _interleaved(aws, b, a)()


@pytest.mark.parametrize("order", ORDERS)
def test_both_holders_expire_their_copies_and_the_item_goes_with_the_last(aws, tmp_path, order):
    volumes = _held_twice(aws, tmp_path)
    before = Ledger(aws.dynamodb, TABLE).versions(BUCKET, KEY)
    old = sorted(r.version_token for r in before[:2])

    _run(aws, volumes, order, keep_last_versions=1)

    left = Ledger(aws.dynamodb, TABLE).versions(BUCKET, KEY)
    assert [r.version_token for r in left] == [before[2].version_token]
    assert sorted(left[0].holder_volumes()) == ["vol-a", "vol-b"]  # the current one stays
    for volume in volumes.values():
        assert _expired_notes(volume) == old  # before: only the first member's journal
        assert _collect(volume) == 2  # before: the second member's copies leaked


def test_after_one_holder_ran_the_ledger_still_lists_the_others_copies(aws, tmp_path):
    volumes = _held_twice(aws, tmp_path)
    before = Ledger(aws.dynamodb, TABLE).versions(BUCKET, KEY)

    _retention(aws, volumes, "vol-a", keep_last_versions=1).run_once()

    left = Ledger(aws.dynamodb, TABLE).versions(BUCKET, KEY)
    assert [r.version_token for r in left] == [r.version_token for r in before]
    assert [r.holder_volumes() for r in left[:2]] == [["vol-b"], ["vol-b"]]
    assert [r.volume_id for r in left[:2]] == ["vol-b", "vol-b"]  # older readers: a holder
    assert _collect(volumes["vol-a"]) == 2
    assert _collect(volumes["vol-b"]) == 0  # b's copies are b's until b's retention runs


@pytest.mark.parametrize("order", ORDERS)
def test_a_deleted_key_expires_whole_only_when_its_last_holder_ran(aws, tmp_path, order):
    """keep_deleted_days: every record of the deleted key expires. The first member must
    leave LATEST (the other still holds copies, and its retention finds keys by LATEST)."""
    volumes = _held_twice(aws, tmp_path, then_delete=True)

    _run(aws, volumes, order, keep_deleted=timedelta(days=1))

    ledger = Ledger(aws.dynamodb, TABLE)
    assert ledger.versions(BUCKET, KEY) == []
    assert ledger.latest(BUCKET, KEY) is None
    for volume in volumes.values():
        assert len(_expired_notes(volume)) == 4  # three versions and the delete marker
        assert _collect(volume) == 3


def test_dry_run_on_one_holder_does_not_count_a_shared_key_as_expired(aws, tmp_path):
    volumes = _held_twice(aws, tmp_path, then_delete=True)
    retention = _retention(aws, volumes, "vol-a", keep_deleted=timedelta(days=1))

    report = retention.run_once(dry_run=True)

    assert (report.expired, report.keys_expired) == (4, 0)  # b holds them too


def test_the_agent_role_allows_every_release_and_delete(aws, tmp_path):
    """Both members' retention as the agent role of a `replicas: 2` config: the holder
    UpdateItem (its `holders` entry, `volume_id` moved) and the conditional DeleteItem
    are granted; the UpdateItem's dynamodb:Attributes stay the key, holders, volume_id."""
    volumes = _held_twice(aws, tmp_path, then_delete=True)
    recorder = Recorder()
    with recorder.installed(), recorder.role("agent"):
        _run(aws, volumes, "a-then-b", keep_deleted=timedelta(days=1))

    policy = policy_document(group_config(tmp_path, 1), role="agent")
    made = {c.operation for c in recorder.calls}
    assert {"UpdateItem", "DeleteItem"} <= made
    for call in recorder.calls:
        for check in checks(call):
            assert matching_statements(policy, check), check


class _LostDeleteResponse:
    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def delete_item(self, **kwargs: Any) -> Any:
        self._client.delete_item(**kwargs)  # applied; its response lost
        return self._client.delete_item(**kwargs)  # botocore's retry: refused, no item


def test_a_lost_response_to_the_last_holds_delete_still_forgets_the_deleted_key(aws, tmp_path):
    """The last holder's DeleteItem applied, its response lost and the request sent again:
    release said nothing was deleted, so the deleted key's LATEST stayed, by this run and
    every later one (the fleet review, 2026-12-02)."""
    volumes = _held_twice(aws, tmp_path, then_delete=True)
    rules = {"keep_deleted": timedelta(days=1)}
    _retention(aws, volumes, "vol-b", **rules).run_once()  # b releases its holds first
    Retention(
        ledger=Ledger(
            _LostDeleteResponse(aws.dynamodb), TABLE, group=GROUPS["vol-a"], volume_id="vol-a"
        ),
        journal=Journal(volumes["vol-a"].journal_dir),
        policy=RetentionPolicy(**rules),
        buckets=[BUCKET],
        clock=FakeClock(AT + timedelta(days=30)),
        volume_id="vol-a",
    ).run_once()  # a holds the last of each: its deletes go through, their answers lost

    ledger = Ledger(aws.dynamodb, TABLE)
    assert ledger.versions(BUCKET, KEY) == []
    assert ledger.latest(BUCKET, KEY) is None


def test_a_latest_with_no_version_left_is_removed_by_the_next_run(aws, tmp_path):
    """However it came about (a release's answer lost before the fix above, an older
    release), a LATEST with no version behind it was never removed: the key stayed listed."""
    volumes = _held_twice(aws, tmp_path, then_delete=True)
    ledger = Ledger(aws.dynamodb, TABLE)
    for record in ledger.versions(BUCKET, KEY):
        ledger.delete_version(record)  # the versions gone, LATEST left
    assert ledger.latest(BUCKET, KEY) is not None

    _retention(aws, volumes, "vol-a", keep_deleted=timedelta(days=1)).run_once()

    assert ledger.latest(BUCKET, KEY) is None
