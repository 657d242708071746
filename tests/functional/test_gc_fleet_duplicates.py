"""gc frees the copy a fleet member kept after losing a duplicate delivery (moto, the real
pipeline of two members on one table): once older than the grace period, and only when no
other record of its journal references it. The rule as a model:
tests/unit/test_gc_fleet_duplicates.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from agent.lifecycle.gc import GarbageCollector, GcReport
from agent.pipeline import delivery
from agent.pipeline.backup import Outcome
from agent.storage.journal import Journal
from agent.storage.ledger import VERSION_PREFIX, Ledger, object_pk, table_definition
from agent.storage.volume import CompressionSettings, Volume
from tests.support.aws import BUCKET, TABLE
from tests.support.clock import FakeClock
from tests.support.fleet import two_members
from tests.support.lifecycle import created, enable_versioning, put

GRACE = timedelta(hours=1)


def _collect(aws, volume: Volume, *, hours_later: float, dry_run: bool = False) -> GcReport:
    return GarbageCollector(
        volume=volume,
        journal=Journal(volume.journal_dir),
        grace_period=GRACE,
        clock=FakeClock(datetime.now(UTC) + timedelta(hours=hours_later)),
        ledger=Ledger(aws.dynamodb, TABLE),
        volume_id=volume.root.name,
    ).run_once(dry_run=dry_run)


def _both_copy(aws, a, b, key: str, body: bytes) -> str:
    """S3 sends the event twice: member a records the version, member b loses the race and
    keeps its copy (journalled on b). The version's SHA-256."""
    event = created(key, put(aws, key, body), len(body), at=datetime.now(UTC))
    assert a.process(event).outcome == Outcome.STORED
    with delivery.delivering(delivery.Delivery("dup-" + key, receive_count=1)):
        assert b.process(event).outcome == Outcome.ALREADY_DONE
    [record] = Ledger(aws.dynamodb, TABLE).versions(BUCKET, key)
    assert record.volume_id == "vol-a" and record.sha256
    return record.sha256


def test_the_losers_copy_goes_after_the_grace_period_and_the_winners_stays(aws, tmp_path):
    enable_versioning(aws)
    (volume_a, a), (volume_b, b) = two_members(aws, tmp_path)
    sha = _both_copy(aws, a, b, "docs/report.txt", b"quarterly numbers")
    assert volume_b.has_copy(sha)

    young = _collect(aws, volume_b, hours_later=0.5)
    assert young.duplicates == 0 and volume_b.has_copy(sha)  # in its grace: not looked at
    looked = _collect(aws, volume_b, hours_later=2, dry_run=True)
    assert looked.duplicates == 1 and [s for s, _ in looked.would_remove] == [sha]
    assert volume_b.has_copy(sha)  # a dry run changes nothing

    report = _collect(aws, volume_b, hours_later=2)

    assert (report.duplicates, report.removed) == (1, 1) and not volume_b.has_copy(sha)
    assert list(Journal(volume_b.journal_dir).read_all()) == []  # b's journal forgot it
    [note] = Journal(volume_b.journal_dir).read_notes("expired")
    assert (note["reason"], note["holder"], note["key"]) == (
        "fleet-duplicate",
        "vol-a",
        "docs/report.txt",
    )
    [record] = Ledger(aws.dynamodb, TABLE).versions(BUCKET, "docs/report.txt")
    assert record.volume_id == "vol-a"  # the ledger is untouched
    assert _collect(aws, volume_a, hours_later=2).removed == 0 and volume_a.has_copy(sha)
    assert _collect(aws, volume_b, hours_later=3).duplicates == 0  # looked at once


def test_a_lost_duplicates_copy_another_record_of_the_volume_references_stays(aws, tmp_path):
    enable_versioning(aws)
    (_volume_a, a), (volume_b, b) = two_members(aws, tmp_path)
    sha = _both_copy(aws, a, b, "docs/report.txt", b"the same bytes")
    # b alone backs up another key with the same content: its record references the copy
    event = created("docs/copy.txt", put(aws, "docs/copy.txt", b"the same bytes"), 14,
                    at=datetime.now(UTC))  # fmt: skip
    assert b.process(event).outcome in (Outcome.STORED, Outcome.DEDUPLICATED)

    report = _collect(aws, volume_b, hours_later=2)

    assert (report.duplicates, report.removed) == (1, 0) and volume_b.has_copy(sha)
    [kept] = Journal(volume_b.journal_dir).read_all()
    assert kept.key == "docs/copy.txt" and kept.sha256 == sha


def test_a_version_journalled_but_not_yet_in_the_ledger_keeps_its_copy(aws, tmp_path):
    """The commit stage writes the journal line first: until its ledger write, the ledger
    does not know the version, and the copy may be the only one."""
    enable_versioning(aws)
    (_volume_a, _a), (volume_b, b) = two_members(aws, tmp_path)
    event = created("docs/new.txt", put(aws, "docs/new.txt", b"fresh"), 5, at=datetime.now(UTC))
    assert b.process(event).outcome == Outcome.STORED
    [record] = Journal(volume_b.journal_dir).read_all()
    aws.dynamodb.delete_item(  # as if the ledger write had not happened yet
        TableName=TABLE,
        Key={
            "pk": {"S": object_pk(BUCKET, "docs/new.txt")},
            "sk": {"S": VERSION_PREFIX + record.version_token},
        },
    )
    assert (
        Ledger(aws.dynamodb, TABLE).get_version(BUCKET, "docs/new.txt", record.version_token)
        is None
    )

    report = _collect(aws, volume_b, hours_later=2)

    assert (report.duplicates, report.removed) == (0, 0) and volume_b.has_copy(record.sha256)


def test_a_ledger_item_naming_other_bytes_does_not_free_the_copy(aws, tmp_path):
    """Ledger items are untrusted: one that names the holder but another SHA-256 (tampered,
    or a bug) must not make gc free the copy that may be the only good one."""
    enable_versioning(aws)
    (_volume_a, a), (volume_b, b) = two_members(aws, tmp_path)
    sha = _both_copy(aws, a, b, "docs/report.txt", b"quarterly numbers")
    [record] = Journal(volume_b.journal_dir).read_all()
    aws.dynamodb.update_item(
        TableName=TABLE,
        Key={
            "pk": {"S": object_pk(BUCKET, "docs/report.txt")},
            "sk": {"S": VERSION_PREFIX + record.version_token},
        },
        UpdateExpression="SET sha256 = :other",
        ExpressionAttributeValues={":other": {"S": "0" * 64}},
    )

    report = _collect(aws, volume_b, hours_later=2)

    assert (report.duplicates, report.removed) == (0, 0) and volume_b.has_copy(sha)


def test_with_the_table_unreachable_gc_runs_on_its_journal_alone_and_asks_next_time(aws, tmp_path):
    enable_versioning(aws)
    (_volume_a, a), (volume_b, b) = two_members(aws, tmp_path)
    sha = _both_copy(aws, a, b, "docs/report.txt", b"quarterly numbers")
    stray = volume_b.write_copy([b"no record names me"], CompressionSettings(level=1, threads=1))
    old = (datetime.now(UTC) - timedelta(hours=5)).timestamp()
    os.utime(volume_b.copy_path(stray.sha256), (old, old))
    items = aws.dynamodb.scan(TableName=TABLE)["Items"]  # test-side: put back below
    aws.dynamodb.delete_table(TableName=TABLE)

    report = _collect(aws, volume_b, hours_later=2)

    assert (report.duplicates, report.removed) == (0, 1)  # the unreferenced copy still goes
    assert volume_b.has_copy(sha) and not volume_b.has_copy(stray.sha256)
    aws.dynamodb.create_table(**table_definition(TABLE))
    for item in items:
        aws.dynamodb.put_item(TableName=TABLE, Item=item)
    assert _collect(aws, volume_b, hours_later=3).duplicates == 1  # the window did not move
    assert not volume_b.has_copy(sha)
