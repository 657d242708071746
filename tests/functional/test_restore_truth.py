"""Restore equals what S3 held (issue 15, items 1 and 2), against a versioned moto bucket.

Each test compares what S3 serves (GetObject without VersionId) with what every restore
path picks: `--key` (the key's history), `--prefix` (the ledger's LATEST), `--offline`
(the journal) and `--at`. Events are hand-made as S3 sends them (moto sends no versionId,
no sequencer, nothing for a delete marker); one clock drives S3, the events and the agent.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from agent.config import ReconcileConfig
from agent.lifecycle.context import Pacer
from agent.lifecycle.gc import GarbageCollector
from agent.lifecycle.reconcile import Reconciler
from agent.lifecycle.retention import Retention, RetentionPolicy
from agent.restore.source import JournalSource, LedgerSource
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import CompressionSettings
from tests.support.aws import BUCKET, TABLE
from tests.support.service import make_service
from tests.support.truth import (
    T0,
    Bucket,
    S3Clock,
    chosen_by_prefix,
    content,
    restored,
)


@pytest.fixture
def clock(monkeypatch) -> S3Clock:
    return S3Clock(T0).install(monkeypatch)


@pytest.fixture
def bucket(aws, clock) -> Bucket:
    return Bucket(aws.s3, clock)


@pytest.fixture
def ledger(aws) -> Ledger:
    return Ledger(aws.dynamodb, TABLE)


@pytest.fixture
def service(aws, volume, ledger, clock):
    return make_service(
        aws, volume, ledger=ledger, clock=clock, compression=CompressionSettings(threads=1)
    )


def reconcile(aws, volume, ledger, service, clock, **settings) -> None:
    Reconciler(
        s3=aws.s3,
        ledger=ledger,
        service=service,
        volume=volume,
        buckets=[BUCKET],
        settings=ReconcileConfig(**settings),
        clock=clock,
        limiter=Pacer(1000, sleep=lambda s: None),
    ).run_once()


def assert_restores(volume, ledger, bucket, key, expected: bytes | None) -> None:
    """S3 serves `expected`, and every restore path brings back exactly that."""
    assert bucket.served(key) == expected
    journal = JournalSource(Journal(volume.journal_dir))
    for source in (LedgerSource(ledger), journal):
        assert restored(volume, source, key) == expected, source.name
        assert restored(volume, source, key, at=bucket.clock.now) == expected, source.name
        assert content(volume, chosen_by_prefix(source, key)) == expected, source.name


# -- item 1: one version order --------------------------------------------------------------


def test_a_version_only_reconcile_saw_wins_over_an_older_version_from_an_event(
    aws, volume, ledger, service, bucket, clock
):
    """The newer version's event was lost; reconcile backs it up from the listing. `--key`
    and `--at` picked the older, evented version: every `s<sequencer>` sorted after every
    `e<time>`."""
    _, first = bucket.put("report.txt", b"old")
    service.process(first)
    clock.tick(60)
    bucket.put("report.txt", b"new")  # the event is lost (a purged queue)
    clock.tick(60)

    reconcile(aws, volume, ledger, service, clock)

    assert_restores(volume, ledger, bucket, "report.txt", b"new")


def test_an_older_event_redriven_after_reconcile_does_not_move_latest_back(
    aws, volume, ledger, service, bucket, clock
):
    """Both events were lost; reconcile backs up the current version only (noncurrent ones
    are left out). The older event, redriven from the DLQ later, made LATEST go back."""
    _, stale = bucket.put("report.txt", b"old")
    clock.tick(60)
    bucket.put("report.txt", b"new")
    clock.tick(60)
    reconcile(aws, volume, ledger, service, clock, include_noncurrent=False)
    clock.tick(60)

    service.process(stale)  # the DLQ redrive, hours later

    assert_restores(volume, ledger, bucket, "report.txt", b"new")


def test_at_a_time_between_two_versions_picks_the_one_s3_then_served(
    aws, volume, ledger, service, bucket, clock
):
    _, first = bucket.put("report.txt", b"old")
    service.process(first)
    between = clock.tick(60)
    clock.tick(60)
    bucket.put("report.txt", b"new")  # event lost
    clock.tick(60)
    reconcile(aws, volume, ledger, service, clock)

    for source in (LedgerSource(ledger), JournalSource(Journal(volume.journal_dir))):
        assert restored(volume, source, "report.txt", at=between) == b"old"
        assert restored(volume, source, "report.txt", at=clock.now) == b"new"


# -- item 2: real S3 delete semantics ---------------------------------------------------------


def test_deleting_the_current_version_for_good_brings_the_previous_one_back(
    volume, ledger, service, bucket, clock
):
    _, first = bucket.put("doc.txt", b"first")
    service.process(first)
    clock.tick()
    second, event = bucket.put("doc.txt", b"second")
    service.process(event)
    clock.tick()

    service.process(bucket.delete_version("doc.txt", second))

    assert_restores(volume, ledger, bucket, "doc.txt", b"first")
    latest = ledger.latest(BUCKET, "doc.txt")
    assert latest is not None and not latest.deleted and latest.sha256


def test_deleting_an_old_version_for_good_leaves_the_key_as_it_is(
    volume, ledger, service, bucket, clock
):
    old, first = bucket.put("doc.txt", b"first")
    service.process(first)
    clock.tick()
    service.process(bucket.put("doc.txt", b"second")[1])
    clock.tick()

    service.process(bucket.delete_version("doc.txt", old))

    assert_restores(volume, ledger, bucket, "doc.txt", b"second")


def test_a_delete_marker_makes_the_key_deleted(volume, ledger, service, bucket, clock):
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()

    service.process(bucket.delete("doc.txt")[1])

    assert_restores(volume, ledger, bucket, "doc.txt", None)


def test_removing_the_delete_marker_brings_the_key_back(volume, ledger, service, bucket, clock):
    """An undelete is ObjectRemoved:Delete of the marker's version id; its tombstone had
    the marker's own token, so it was taken for a duplicate and the key stayed deleted."""
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()
    marker, event = bucket.delete("doc.txt")
    service.process(event)
    clock.tick()

    service.process(bucket.delete_version("doc.txt", marker))

    assert_restores(volume, ledger, bucket, "doc.txt", b"first")


def test_keep_deleted_days_never_expires_a_live_object(aws, volume, ledger, service, bucket, clock):
    """The current version deleted for good made LATEST a tombstone: retention then took the
    key for deleted and, keep_deleted_days later, expired the copies S3 still serves."""
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()
    second, event = bucket.put("doc.txt", b"second")
    service.process(event)
    clock.tick()
    service.process(bucket.delete_version("doc.txt", second))

    clock.tick(30 * 86400)
    Retention(
        ledger=ledger,
        journal=Journal(volume.journal_dir),
        policy=RetentionPolicy(keep_deleted=timedelta(days=7)),
        buckets=[BUCKET],
        clock=clock,
    ).run_once()
    GarbageCollector(
        volume=volume,
        journal=Journal(volume.journal_dir),
        grace_period=timedelta(seconds=0),
        clock=lambda: clock.now + timedelta(days=365),
    ).run_once()

    assert_restores(volume, ledger, bucket, "doc.txt", b"first")


def test_the_undelete_and_its_marker_delivered_in_either_order(
    volume, ledger, service, bucket, clock
):
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()
    marker, created = bucket.delete("doc.txt")
    clock.tick()
    undelete = bucket.delete_version("doc.txt", marker)

    service.process(undelete)  # the removal of the marker overtakes the marker's own event
    service.process(created)

    assert_restores(volume, ledger, bucket, "doc.txt", b"first")


# -- reconcile: S3's listing decides what is current, in both directions ----------------------


def test_in_one_second_the_listing_decides_which_version_is_current(
    aws, volume, ledger, service, bucket, clock
):
    """Inside one second a listed version (whole-second LastModified) and an evented one
    (sequencer) cannot be compared; the listing's IsLatest decides."""
    clock.tick(0.1)
    bucket.put("doc.txt", b"older")  # event lost: reconcile finds it, same second
    clock.tick(0.5)
    service.process(bucket.put("doc.txt", b"newer")[1])
    clock.tick(60)

    reconcile(aws, volume, ledger, service, clock)

    assert_restores(volume, ledger, bucket, "doc.txt", b"newer")
    notes = list(Journal(volume.journal_dir).read_notes("order"))
    assert len(notes) == 1  # the journal knows the correction too (--offline, reindex)


def test_a_newer_event_in_the_second_of_a_listed_version_waits_for_the_next_reconcile(
    aws, volume, ledger, service, bucket, clock
):
    """A known limit (docs/restore.md, "Known limits"), shown as it is: reconcile lists a
    version in the same second as a newer put whose event comes after the run. Inside one
    second a listed version sorts after an evented one (the sources cannot be compared), so
    the restore keeps the listed, older version until the next reconcile run follows S3's
    IsLatest. One second at most for `--at`; until the next run for the current version."""
    clock.tick(0.1)
    bucket.put("doc.txt", b"older")  # its event lost
    clock.tick(0.2)
    reconcile(aws, volume, ledger, service, clock)  # same second: lists "older"
    clock.tick(0.3)
    _, newer = bucket.put("doc.txt", b"newer")  # still the same second
    service.process(newer)

    assert bucket.served("doc.txt") == b"newer"
    for source in (LedgerSource(ledger), JournalSource(Journal(volume.journal_dir))):
        assert restored(volume, source, "doc.txt") == b"older", source.name  # the limit

    clock.tick(60)
    reconcile(aws, volume, ledger, service, clock)

    assert_restores(volume, ledger, bucket, "doc.txt", b"newer")


def test_a_permanent_delete_whose_event_was_lost_is_found_by_reconcile(
    aws, volume, ledger, service, bucket, clock
):
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()
    second, event = bucket.put("doc.txt", b"second")
    service.process(event)
    clock.tick()
    bucket.delete_version("doc.txt", second)  # event lost
    clock.tick()

    reconcile(aws, volume, ledger, service, clock)

    assert_restores(volume, ledger, bucket, "doc.txt", b"first")


def test_an_unseen_permanent_delete_under_a_newer_version_stays_found(
    aws, volume, ledger, service, bucket, clock
):
    """Shrunk from the model test: v1 deleted for good while its event was lost, then v2.
    Reconcile checked only the versions above the current one, so when v2 went too,
    v1 came back in the backup although S3 had nothing."""
    first, event = bucket.put("doc.txt", b"first")
    service.process(event)
    clock.tick()
    bucket.delete_version("doc.txt", first)  # event lost
    clock.tick()
    second, event = bucket.put("doc.txt", b"second")
    service.process(event)
    clock.tick()
    reconcile(aws, volume, ledger, service, clock)
    clock.tick()

    service.process(bucket.delete_version("doc.txt", second))

    assert_restores(volume, ledger, bucket, "doc.txt", None)


def test_a_removal_redriven_after_reconcile_found_it_changes_nothing(
    aws, volume, ledger, service, bucket, clock
):
    """Shrunk from the model test: reconcile dated the removal when it found it; the
    event, redriven later, is a duplicate of it."""
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()
    second, event = bucket.put("doc.txt", b"second")
    service.process(event)
    clock.tick()
    removal = bucket.delete_version("doc.txt", second)  # held back
    clock.tick()
    reconcile(aws, volume, ledger, service, clock)
    clock.tick()

    assert service.process(removal).outcome.value == "already_done"
    assert_restores(volume, ledger, bucket, "doc.txt", b"first")


# -- a volume and a table written by the previous release --------------------------------------


def test_records_of_the_previous_release_restore_what_s3_served(
    aws, volume, ledger, service, bucket, clock
):
    """The previous release's records: "s<sequencer>"/"e<time>" order keys, and the
    permanent delete of the current version as a "del:v:<id>" tombstone made LATEST.
    Both sources restore today's answer without a migration step."""
    service.process(bucket.put("doc.txt", b"first")[1])
    clock.tick()
    second, event = bucket.put("doc.txt", b"second")
    service.process(event)
    clock.tick()
    service.process(bucket.delete_version("doc.txt", second))
    clock.tick()
    service.process(bucket.put("other.txt", b"evented")[1])
    clock.tick(60)
    bucket.put("other.txt", b"reconciled")  # the event was lost; reconcile found it
    reconcile(aws, volume, ledger, service, clock)
    as_previous_release(aws, volume)

    assert_restores(volume, ledger, bucket, "doc.txt", b"first")
    assert_restores(volume, ledger, bucket, "other.txt", b"reconciled")


def as_previous_release(aws, volume) -> None:
    """Rewrite journal and table as the previous release wrote them."""
    import json

    from boto3.dynamodb.types import TypeSerializer

    def old(line: dict) -> dict:
        line = dict(line)
        if line.get("sequencer"):
            line["order_key"] = "s" + line["sequencer"].upper().ljust(64, "0")
        else:
            at = line["event_time"].replace("+00:00", "")
            line["order_key"] = "e" + at.replace("-", "").replace(":", "") + "Z"
        if line["version_token"].startswith("rm:"):
            line["version_token"] = "del:" + line["version_token"][3:]
        return line

    for segment in volume.journal_dir.glob("*.jsonl"):
        lines = [json.loads(raw) for raw in segment.read_text().splitlines()]
        rewritten = [old(line) if "kind" not in line else line for line in lines]
        segment.write_text("".join(json.dumps(line) + "\n" for line in rewritten))
    items = aws.dynamodb.scan(TableName=TABLE)["Items"]  # test-side only
    for item in items:
        aws.dynamodb.delete_item(TableName=TABLE, Key={"pk": item["pk"], "sk": item["sk"]})
    latest: dict[str, dict] = {}
    for line in (old(r.to_dict()) for r in Journal(volume.journal_dir).read_all()):
        pk = f"{line['bucket']}/{line['key']}"
        item = {**line, "pk": pk, "sk": "V#" + line["version_token"]}
        aws.dynamodb.put_item(
            TableName=TABLE, Item={k: TypeSerializer().serialize(v) for k, v in item.items()}
        )
        newest = latest.get(pk)
        if newest is None or line["order_key"] > newest["order_key"]:
            latest[pk] = line  # the previous release's LATEST: the largest old order key
    for pk, line in latest.items():
        item = {**line, "pk": pk, "sk": "LATEST", "gsi_bucket": BUCKET, "gsi_key": line["key"]}
        aws.dynamodb.put_item(
            TableName=TABLE, Item={k: TypeSerializer().serialize(v) for k, v in item.items()}
        )
