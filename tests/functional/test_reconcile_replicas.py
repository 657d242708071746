"""Raising `fleet.replicas` (moto): reconcile on a new group's member copies the versions
recorded before the change (docs/fleet.md "Changing R").

A bucket backed up with `replicas: 1` (items name `vol-a`, no groups); R raised to 2;
reconcile on group 2's member (`vol-b`) copies every recorded version retention keeps
(current and kept noncurrent) under the record's own token and order, and the ledger adds
group 2 as a holder; `verify` then lists nothing under-replicated; a second run, or another
member of the group, copies nothing; a version S3 no longer has is reported, not copied.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from agent.aws import Clients
from agent.cli.agent import main as agent_main
from agent.cli.restore import main as restore_main
from agent.config import ReconcileConfig
from agent.lifecycle.context import Pacer
from agent.lifecycle.reconcile import Reconciler
from agent.lifecycle.retention import RetentionPolicy
from agent.operations.bootstrap import Bootstrap
from agent.pipeline.backup import BackupService, Outcome
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import Volume
from tests.support.aws import BUCKET, REGION, TABLE, make_config, mocked_aws
from tests.support.backed_up import write_config
from tests.support.fleet import member_service, member_volume
from tests.support.lifecycle import created, enable_versioning, put

ACCOUNT = "123456789012"
BASE = f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/backup-events"
GROUPS = ["backup-events-1", "backup-events-2"]
AT = datetime.now(UTC) - timedelta(days=2)


@pytest.fixture
def clients() -> Iterator[Clients]:
    with mocked_aws() as clients:
        yield clients


def reconciler(
    clients: Clients, volume: Volume, service: BackupService, **policy: Any
) -> Reconciler:
    return Reconciler(
        s3=clients.s3,
        ledger=Ledger(clients.dynamodb, TABLE),
        service=service,
        volume=volume,
        buckets=[BUCKET],
        settings=ReconcileConfig(include_noncurrent=True),
        policy=RetentionPolicy(**policy),
        limiter=Pacer(1000, sleep=lambda s: None),
    )


def backed_up_with_one_replica(clients: Clients, tmp_path: Path) -> dict[str, list[str]]:
    """Bootstrap with replicas 1, three versions of two keys backed up on vol-a, then R
    raised to 2 (bootstrap again). The version ids, oldest first, per key."""
    Bootstrap(make_config(tmp_path, queue={"url": BASE}), clients).run(create_buckets=True)
    enable_versioning(clients)
    a = member_volume(tmp_path, "vol-a")
    one = member_service(clients, a)  # replicas 1: no group
    versions: dict[str, list[str]] = {}
    for n, (key, body) in enumerate(
        [("a.txt", b"first " * 50), ("a.txt", b"second " * 50), ("b.txt", b"bee " * 50)]
    ):
        response = put(clients, key, body)
        event = created(key, response, len(body), at=AT + timedelta(seconds=n))
        assert one.process(event).outcome == Outcome.STORED
        versions.setdefault(key, []).append(response["VersionId"])
    raised = make_config(tmp_path, queue={"url": f"{BASE}-1"}, fleet={"replicas": 2})
    Bootstrap(raised, clients).run()
    return versions


def records(clients: Clients) -> list[Any]:
    ledger = Ledger(clients.dynamodb, TABLE)
    found = []
    for key in ("a.txt", "b.txt"):
        found += [r for r in ledger.versions(BUCKET, key) if r.sha256]
    return found


def verify(tmp_path: Path, root: Path) -> tuple[int, list[dict[str, Any]]]:
    config_path = write_config(
        tmp_path / "config.yaml",
        root,
        queue={"url": f"{BASE}-1", "wait_time_seconds": 0},
        fleet={"replicas": 2},
    )
    out, err = io.StringIO(), io.StringIO()
    code = restore_main(["verify", "--config", str(config_path), "--json"], out=out, err=err)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_reconcile_on_a_new_groups_member_copies_every_recorded_version(clients, tmp_path):
    versions = backed_up_with_one_replica(clients, tmp_path)
    code, lines = verify(tmp_path, tmp_path / "vol-a")
    assert code == 1 and lines[-1]["under_replicated"] == 3
    b = member_volume(tmp_path, "vol-b")
    group_2 = member_service(clients, b, group=GROUPS[1])

    report = reconciler(clients, b, group_2).run_once()

    assert report.completed and report.failed == 0 and report.gone == 0
    assert (report.backed_up, report.replicated) == (3, 3)
    recorded = records(clients)
    assert sorted(r.version_id for r in recorded) == sorted(
        v for ids in versions.values() for v in ids
    )
    for record in recorded:
        assert record.volume_id == "vol-a"
        assert record.holders == {GROUPS[1]: "vol-b"}
        assert record.holder_volumes() == ["vol-a", "vol-b"]
    # vol-b's journal holds each version under the ledger's token, order and checksum
    journal = {r.version_token: r for r in Journal(b.journal_dir).read_all()}
    assert set(journal) == {r.version_token for r in recorded}
    for record in recorded:
        mine = journal[record.version_token]
        assert (mine.order_key, mine.sha256, mine.volume_id) == (
            record.order_key,
            record.sha256,
            "vol-b",
        )
        with b.open_copy(record.sha256) as reader:
            assert len(reader.read()) == record.size
    code, lines = verify(tmp_path, tmp_path / "vol-a")
    assert code == 0 and lines[-1]["under_replicated"] == 0

    again = reconciler(clients, b, group_2).run_once()
    assert (again.backed_up, again.replicated, again.failed) == (0, 0, 0)
    assert len(list(Journal(b.journal_dir).read_all())) == 3


def test_the_old_volumes_group_and_a_second_member_of_the_new_group_copy_nothing(clients, tmp_path):
    backed_up_with_one_replica(clients, tmp_path)
    a = Volume(tmp_path / "vol-a")
    a.open()
    group_1_a = member_service(clients, a, group=GROUPS[0])
    b, c = member_volume(tmp_path, "vol-b"), member_volume(tmp_path, "vol-c")

    # vol-a's member, now in group 1: items written before replicas name its volume
    old = reconciler(clients, a, group_1_a).run_once()
    assert (old.backed_up, old.replicated) == (0, 0)
    assert len(list(Journal(a.journal_dir).read_all())) == 3

    reconciler(clients, b, member_service(clients, b, group=GROUPS[1])).run_once()
    other = reconciler(clients, c, member_service(clients, c, group=GROUPS[1])).run_once()

    assert (other.backed_up, other.replicated) == (0, 0)
    assert list(Journal(c.journal_dir).read_all()) == []
    assert all(r.holders == {GROUPS[1]: "vol-b"} for r in records(clients))


def test_noncurrent_versions_retention_drops_are_not_copied(clients, tmp_path):
    versions = backed_up_with_one_replica(clients, tmp_path)
    b = member_volume(tmp_path, "vol-b")

    report = reconciler(
        clients, b, member_service(clients, b, group=GROUPS[1]), keep_last_versions=1
    ).run_once()

    assert report.replicated == 2  # a.txt's current version and b.txt's
    held = {r.version_id: r.holders for r in records(clients)}
    assert held[versions["a.txt"][0]] is None  # the noncurrent one retention drops
    assert held[versions["a.txt"][1]] == held[versions["b.txt"][0]] == {GROUPS[1]: "vol-b"}


def test_a_dry_run_lists_what_it_would_copy_and_copies_nothing(clients, tmp_path):
    versions = backed_up_with_one_replica(clients, tmp_path)
    b = member_volume(tmp_path, "vol-b")

    report = reconciler(clients, b, member_service(clients, b, group=GROUPS[1])).run_once(
        dry_run=True
    )

    assert report.replicated == 3
    assert sorted(report.would_back_up) == sorted(
        (BUCKET, key, version) for key, ids in versions.items() for version in ids
    )
    assert list(Journal(b.journal_dir).read_all()) == []
    assert all(r.holders is None for r in records(clients))


def test_a_version_deleted_from_s3_before_the_run_is_recorded_removed_not_copied(clients, tmp_path):
    versions = backed_up_with_one_replica(clients, tmp_path)
    old = versions["a.txt"][0]
    clients.s3.delete_object(Bucket=BUCKET, Key="a.txt", VersionId=old)  # its event lost
    b = member_volume(tmp_path, "vol-b")

    report = reconciler(clients, b, member_service(clients, b, group=GROUPS[1])).run_once()

    assert (report.replicated, report.tombstoned, report.failed) == (2, 1, 0)
    assert old not in {r.version_id for r in Journal(b.journal_dir).read_all() if r.sha256}
    removals = [r for r in Ledger(clients.dynamodb, TABLE).versions(BUCKET, "a.txt") if r.deleted]
    assert [r.version_id for r in removals] == [old]
    # verify does not count the version S3 deleted for good as held by fewer than R volumes
    # (no group can copy it any more); its copy on vol-a is still verified
    code, lines = verify(tmp_path, tmp_path / "vol-a")
    short = [line["version_id"] for line in lines if line.get("type") == "under_replicated"]
    summary = lines[-1]
    assert (code, short, summary["under_replicated"]) == (0, [], 0)
    assert summary["ok"] and summary["versions"] == 3 and summary["problems"] == 0


def test_a_version_deleted_between_listing_and_copy_is_reported_gone_once(clients, tmp_path):
    versions = backed_up_with_one_replica(clients, tmp_path)
    old = versions["a.txt"][0]
    b = member_volume(tmp_path, "vol-b")
    service = member_service(clients, b, group=GROUPS[1])
    stale = reconciler(clients, b, service)
    listing = list(stale.list_bucket(BUCKET, None))
    clients.s3.delete_object(Bucket=BUCKET, Key="a.txt", VersionId=old)
    stale.list_bucket = lambda bucket, after: iter(listing)  # type: ignore[method-assign]

    report = stale.run_once()

    assert (report.gone, report.replicated, report.failed) == (1, 2, 0)
    assert old not in {r.version_id for r in Journal(b.journal_dir).read_all() if r.sha256}
    # the next run lists it no more: its removal is recorded, nothing is tried again
    again = reconciler(clients, b, service).run_once()
    assert (again.gone, again.replicated, again.backed_up, again.tombstoned) == (0, 0, 0, 1)
    third = reconciler(clients, b, service).run_once()
    assert (third.gone, third.replicated, third.backed_up, third.tombstoned) == (0, 0, 0, 0)


@pytest.mark.parametrize("sequencer", ["0055AED6DCD90281E5", None])
def test_an_unversioned_object_is_copied_under_its_recorded_token(clients, tmp_path, sequencer):
    Bootstrap(make_config(tmp_path, queue={"url": BASE}), clients).run(create_buckets=True)
    a = member_volume(tmp_path, "vol-a")
    body = b"plain " * 40
    response = put(clients, "plain.txt", body)
    event = created("plain.txt", response, len(body), at=AT, sequencer=sequencer)
    assert member_service(clients, a).process(event).outcome == Outcome.STORED
    b = member_volume(tmp_path, "vol-b")
    group_2 = member_service(clients, b, group=GROUPS[1])

    report = reconciler(clients, b, group_2).run_once()

    assert (report.replicated, report.failed) == (1, 0)
    [record] = Ledger(clients.dynamodb, TABLE).versions(BUCKET, "plain.txt")
    assert record.version_token == event.version_token
    assert record.holders == {GROUPS[1]: "vol-b"}
    [mine] = Journal(b.journal_dir).read_all()
    assert (mine.version_token, mine.order_key) == (record.version_token, record.order_key)
    again = reconciler(clients, b, group_2).run_once()
    assert (again.replicated, again.backed_up) == (0, 0)


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """agent_main() configures logging onto pytest's captured stream: undo that afterwards."""
    handlers = list(logging.root.handlers)
    yield
    structlog.reset_defaults()
    logging.root.handlers[:] = handlers


@pytest.mark.usefixtures("_restore_logging")
def test_the_documented_commands_on_the_new_groups_member(clients, tmp_path, capsys):
    """docs/fleet.md "Changing R", step 4 and 5: `backup-agent reconcile --dry-run`, then
    `backup-agent reconcile --json` on group 2's member, then verify."""
    versions = backed_up_with_one_replica(clients, tmp_path)
    b = member_volume(tmp_path, "vol-b")
    b_config = write_config(
        tmp_path / "vol-b.yaml",
        b.root,
        queue={"url": f"{BASE}-2", "wait_time_seconds": 0},
        fleet={"replicas": 2},
        reconcile={"objects_per_second": 1000},
    )
    capsys.readouterr()

    assert agent_main(["reconcile", "--config", str(b_config), "--dry-run"]) == 0
    listed = capsys.readouterr().out
    assert "would back up 3 (" in listed and "of which 3 for this replica group," in listed
    assert all(version in listed for ids in versions.values() for version in ids)
    assert agent_main(["reconcile", "--config", str(b_config), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["backed_up"], document["replicated"], document["failed"]) == (3, 3, 0)
    assert all(r.holders == {GROUPS[1]: "vol-b"} for r in records(clients))
    code, lines = verify(tmp_path, tmp_path / "vol-a")
    assert code == 0 and lines[-1]["under_replicated"] == 0
