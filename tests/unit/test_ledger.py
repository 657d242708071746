"""The DynamoDB ledger (moto): idempotent records, LATEST only moves forward, no scans."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from moto import mock_aws

from agent import history
from agent.errors import PermanentError, RetryableError
from agent.events import EventKind, ObjectEvent
from agent.records import VersionRecord
from agent.storage.ledger import Ledger, table_definition
from tests.support.aws_hooks import Fault, inject, record_calls

BUCKET = "company-documents"
TABLE = "backup-agent-objects"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BACKED_UP = datetime(2026, 11, 23, 10, 5, tzinfo=UTC)


@pytest.fixture
def dynamodb() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        yield client


@pytest.fixture
def ledger(dynamodb) -> Ledger:
    return Ledger(dynamodb, TABLE)


def event(
    key: str = "reports/q1.txt",
    *,
    sequencer: str | None = None,
    version_id: str | None = None,
    time: datetime = T0,
    kind: EventKind = EventKind.CREATED,
    bucket: str = BUCKET,
    etag: str | None = "d41d8cd98f00b204e9800998ecf8427e",
    delete_marker: bool = False,
) -> ObjectEvent:
    return ObjectEvent(
        kind=kind,
        bucket=bucket,
        key=key,
        event_name="ObjectCreated:Put" if kind is EventKind.CREATED else "ObjectRemoved:Delete",
        event_time=time,
        version_id=version_id,
        etag=etag if kind is EventKind.CREATED else None,
        size=10 if kind is EventKind.CREATED else None,
        sequencer=sequencer,
        delete_marker=delete_marker,
    )


def stored(e: ObjectEvent, sha: str = "a" * 64) -> VersionRecord:
    return VersionRecord.for_event(
        e, backup_time=BACKED_UP, volume_id="vol-test", sha256=sha, size=10, stored_size=7
    )


def tombstone(e: ObjectEvent) -> VersionRecord:
    return VersionRecord.for_event(e, backup_time=BACKED_UP, volume_id="vol-test")


def item_count(dynamodb) -> int:
    return len(dynamodb.scan(TableName=TABLE)["Items"])  # test-side inspection only


# -- idempotence ----------------------------------------------------------------------------


def test_a_record_round_trips_every_field(ledger):
    record = stored(event(sequencer="0055AED6DCD90281E5", version_id="v1"), sha="b" * 64)
    assert ledger.record(record) is True
    assert ledger.get_version(BUCKET, "reports/q1.txt", "v:v1") == record
    assert ledger.latest(BUCKET, "reports/q1.txt") == record


def test_a_duplicate_delivery_is_a_no_op(ledger, dynamodb):
    record = stored(event(sequencer="0A", version_id="v1"))
    assert ledger.record(record) is True
    items = item_count(dynamodb)
    later_copy = VersionRecord.for_event(
        event(sequencer="0A", version_id="v1"),
        backup_time=BACKED_UP + timedelta(hours=1),
        volume_id="vol-other",
        sha256="a" * 64,
        size=10,
        stored_size=7,
    )
    assert ledger.record(later_copy) is False
    assert item_count(dynamodb) == items
    assert ledger.get_version(BUCKET, "reports/q1.txt", "v:v1") == record  # first one kept
    assert ledger.latest(BUCKET, "reports/q1.txt") == record


def test_unknown_keys_and_versions_are_none(ledger):
    assert ledger.latest(BUCKET, "nothing") is None
    assert ledger.get_version(BUCKET, "nothing", "v:x") is None
    assert ledger.versions(BUCKET, "nothing") == []


# -- LATEST only moves forward --------------------------------------------------------------


def test_an_older_sequencer_never_replaces_latest(ledger):
    newer = stored(event(sequencer="0055AED6DCD90281F0", version_id="new"))
    older = stored(event(sequencer="0055AED6DCD90281E5", version_id="old"))
    ledger.record(newer)
    assert ledger.record(older) is True  # the version itself is recorded
    assert ledger.latest(BUCKET, "reports/q1.txt") == newer
    assert ledger.get_version(BUCKET, "reports/q1.txt", "v:old") == older


def test_a_newer_sequencer_replaces_latest(ledger):
    ledger.record(stored(event(sequencer="0055AED6DCD90281E5", version_id="old")))
    newer = stored(event(sequencer="0055AED6DCD90281F0", version_id="new"))
    ledger.record(newer)
    assert ledger.latest(BUCKET, "reports/q1.txt") == newer


def test_sequencers_of_different_length_compare_after_right_padding(ledger):
    # "1" pads to "10", which is after "0F"; as numbers it would be the other way round.
    padded_larger = stored(event(sequencer="1", version_id="a"))
    ledger.record(padded_larger)
    ledger.record(stored(event(sequencer="0F", version_id="b")))
    assert ledger.latest(BUCKET, "reports/q1.txt") == padded_larger


def test_without_sequencers_an_earlier_event_never_replaces_latest(ledger):
    later = stored(event(time=T0 + timedelta(seconds=1), etag="22"))
    ledger.record(later)
    ledger.record(stored(event(time=T0, etag="11")))
    assert ledger.latest(BUCKET, "reports/q1.txt") == later
    newest = stored(event(time=T0 + timedelta(seconds=2), etag="33"))
    ledger.record(newest)
    assert ledger.latest(BUCKET, "reports/q1.txt") == newest


def test_a_later_second_wins_whatever_reported_it(ledger):
    """One order for every source (agent/order.py): a version recorded without a sequencer
    a second later is later; a sequencer no longer wins over every time."""
    sequenced = stored(event(sequencer="0055AED6DCD90281E5", version_id="real"))
    ledger.record(sequenced)
    later = stored(event(time=T0 + timedelta(seconds=1), version_id="listed"))
    ledger.record(later)
    assert ledger.latest(BUCKET, "reports/q1.txt") == later
    ledger.record(stored(event(sequencer="0055AED6DCD90281F0", version_id="redriven")))
    assert ledger.latest(BUCKET, "reports/q1.txt") == later  # an older second, redriven


def test_within_one_second_a_sequencer_sorts_after_a_time(ledger):
    sequenced = stored(event(sequencer="0055AED6DCD90281E5", version_id="real"))
    ledger.record(sequenced)
    ledger.record(stored(event(time=T0 + timedelta(milliseconds=999), version_id="synthetic")))
    assert ledger.latest(BUCKET, "reports/q1.txt") == sequenced


def test_a_delete_becomes_latest_and_a_late_older_put_does_not_resurrect_the_key(ledger):
    ledger.record(stored(event(sequencer="10", version_id="v1")))
    gone = tombstone(
        event(sequencer="20", version_id="marker", kind=EventKind.REMOVED, delete_marker=True)
    )
    ledger.record(gone)
    ledger.record(stored(event(sequencer="15", version_id="v0")))  # arrives late
    latest = ledger.latest(BUCKET, "reports/q1.txt")
    assert latest == gone and latest.deleted is True and latest.sha256 is None


def test_a_permanent_delete_of_an_older_version_leaves_latest_alone(ledger):
    ledger.record(stored(event(sequencer="10", version_id="v1")))
    current = stored(event(sequencer="20", version_id="v2"))
    ledger.record(current)
    gone_v1 = tombstone(event(sequencer="30", version_id="v1", kind=EventKind.REMOVED))
    ledger.record(gone_v1)
    assert ledger.latest(BUCKET, "reports/q1.txt") == current  # S3 still serves v2
    assert gone_v1 in ledger.versions(BUCKET, "reports/q1.txt")


def test_a_permanent_delete_of_the_only_version_becomes_latest(ledger):
    """No version is left in S3: LATEST is the removal, so the key is listed as deleted."""
    ledger.record(stored(event(sequencer="10", version_id="v1")))
    gone_v1 = tombstone(event(sequencer="30", version_id="v1", kind=EventKind.REMOVED))
    ledger.record(gone_v1)
    assert ledger.latest(BUCKET, "reports/q1.txt") == gone_v1


def test_a_permanent_delete_of_the_current_version_makes_the_previous_one_latest(ledger):
    previous = stored(event(sequencer="10", version_id="v1"))
    ledger.record(previous)
    ledger.record(stored(event(sequencer="20", version_id="v2")))
    ledger.record(tombstone(event(sequencer="30", version_id="v2", kind=EventKind.REMOVED)))
    assert ledger.latest(BUCKET, "reports/q1.txt") == previous


def test_removing_the_delete_marker_makes_the_version_under_it_latest(ledger):
    version = stored(event(sequencer="10", version_id="v1"))
    ledger.record(version)
    marker = event(sequencer="20", version_id="m", kind=EventKind.REMOVED, delete_marker=True)
    ledger.record(tombstone(marker))
    undelete = tombstone(event(sequencer="30", version_id="m", kind=EventKind.REMOVED))
    assert undelete.version_token == "rm:v:m" != tombstone(marker).version_token
    assert ledger.record(undelete) is True  # not a duplicate of the marker
    assert ledger.latest(BUCKET, "reports/q1.txt") == version


def test_a_put_recorded_after_its_own_removal_does_not_become_latest(ledger):
    """The removal was processed while the version's copy was still being written."""
    previous = stored(event(sequencer="10", version_id="v1"))
    ledger.record(previous)
    ledger.record(tombstone(event(sequencer="30", version_id="v2", kind=EventKind.REMOVED)))
    ledger.record(stored(event(sequencer="20", version_id="v2")))
    assert ledger.latest(BUCKET, "reports/q1.txt") == previous


def test_a_permanent_delete_of_an_unknown_key_becomes_latest(ledger):
    gone = tombstone(event(sequencer="30", version_id="v9", kind=EventKind.REMOVED))
    ledger.record(gone)
    assert ledger.latest(BUCKET, "reports/q1.txt") == gone


# -- the null version of a versioning-suspended bucket ------------------------------------------
# "Deleting objects from versioning-suspended buckets": a DELETE without versionId inserts a
# delete marker whose version ID is null, replacing the null version; a PUT replaces the
# null version too; DELETE ?versionId=null removes the null entry for good, and S3 serves
# the newest version left (https://docs.aws.amazon.com/AmazonS3/latest/userguide/
# DeletingObjectsfromVersioningSuspendedBuckets.html, AddingObjectstoVersionSuspendedBuckets.html).
# moto cannot show it: on a suspended bucket its PutObject drops every version of the key and
# its DeleteObject leaves no marker (docs/testing.md).


def null_delete(sequencer: str, *, marker: bool = False) -> VersionRecord:
    return tombstone(
        event(sequencer=sequencer, version_id="null", kind=EventKind.REMOVED, delete_marker=marker)
    )


def served_now(ledger: Ledger) -> VersionRecord | None:
    return history.served(ledger.versions(BUCKET, "reports/q1.txt"))


def test_deleting_the_null_marker_for_good_brings_back_the_version_under_it(ledger):
    """Versioning on: v1. Suspended: a PUT (null "two"), a DELETE (a null marker, which
    replaces "two"). DELETE ?versionId=null removes the marker: S3 serves v1 again, not
    "two" (replaced) and not nothing."""
    v1 = stored(event(sequencer="10", version_id="v1"), sha="1" * 64)
    ledger.record(v1)
    ledger.record(stored(event(sequencer="20", version_id="null"), sha="2" * 64))
    ledger.record(null_delete("30", marker=True))
    assert served_now(ledger) is None

    ledger.record(null_delete("40"))

    assert served_now(ledger) == v1
    assert ledger.latest(BUCKET, "reports/q1.txt") == v1


def test_deleting_the_null_version_for_good_serves_the_newest_version_left(ledger):
    """Two PUTs while suspended: the second null version replaces the first, so removing
    the null version leaves v1 (the first null version does not come back)."""
    v1 = stored(event(sequencer="10", version_id="v1"), sha="1" * 64)
    ledger.record(v1)
    ledger.record(stored(event(sequencer="20", version_id="null"), sha="2" * 64))
    ledger.record(stored(event(sequencer="30", version_id="null"), sha="3" * 64))

    ledger.record(null_delete("40"))

    assert served_now(ledger) == v1
    assert ledger.latest(BUCKET, "reports/q1.txt") == v1


def test_a_null_version_put_after_the_null_delete_is_served(ledger):
    ledger.record(stored(event(sequencer="10", version_id="v1"), sha="1" * 64))
    ledger.record(stored(event(sequencer="20", version_id="null"), sha="2" * 64))
    ledger.record(null_delete("30"))
    again = stored(event(sequencer="40", version_id="null"), sha="4" * 64)

    ledger.record(again)

    assert served_now(ledger) == again
    assert ledger.latest(BUCKET, "reports/q1.txt") == again


def test_deleting_the_only_null_version_leaves_the_key_deleted(ledger):
    """An unversioned bucket (or a key with no other version): absent, as before."""
    ledger.record(stored(event(sequencer="10", version_id="null")))
    gone = null_delete("20")

    ledger.record(gone)

    assert served_now(ledger) is None
    assert ledger.latest(BUCKET, "reports/q1.txt") == gone


# -- queries --------------------------------------------------------------------------------


def test_versions_are_oldest_first_whatever_the_arrival_order(ledger):
    for sequencer, version in [("30", "c"), ("10", "a"), ("2", "d"), ("20", "b")]:
        ledger.record(stored(event(sequencer=sequencer, version_id=version)))
    marker = tombstone(
        event(sequencer="25", version_id="m", kind=EventKind.REMOVED, delete_marker=True)
    )
    ledger.record(marker)
    versions = ledger.versions(BUCKET, "reports/q1.txt")
    assert [v.version_id for v in versions] == ["a", "b", "d", "m", "c"]  # "2" pads to "20"
    assert [v.deleted for v in versions] == [False, False, False, True, False]


def test_versions_of_one_key_exclude_other_keys_sharing_its_prefix(ledger):
    ledger.record(stored(event("a/b", version_id="1")))
    ledger.record(stored(event("a/b/c", version_id="2")))
    ledger.record(stored(event("a/bc", version_id="3")))
    assert [v.key for v in ledger.versions(BUCKET, "a/b")] == ["a/b"]


def test_keys_under_a_prefix_use_the_key_index_and_never_scan(ledger, dynamodb):
    for key in ["reports/b.txt", "reports/a.txt", "reports/sub/c.txt", "reportsX.txt", "z.txt"]:
        ledger.record(stored(event(key, sequencer="01")))
        ledger.record(stored(event(key, sequencer="02", etag="ff")))  # two versions each
    ledger.record(stored(event("reports/a.txt", bucket="other-bucket", sequencer="01")))
    calls = record_calls(dynamodb)

    found = list(ledger.keys(BUCKET, "reports/"))

    assert [r.key for r in found] == ["reports/a.txt", "reports/b.txt", "reports/sub/c.txt"]
    assert all(r.sequencer == "02" for r in found)  # LATEST of each key, one per key
    assert set(calls.operations()) == {"Query"}
    assert all(p["IndexName"] == "by-key" for p in calls.of("Query"))


def test_keys_without_prefix_lists_the_whole_bucket_by_query(ledger, dynamodb):
    for key in ["b", "a", "c/d"]:
        ledger.record(stored(event(key)))
    calls = record_calls(dynamodb)
    assert [r.key for r in ledger.keys(BUCKET)] == ["a", "b", "c/d"]
    assert "Scan" not in calls.operations()


def test_no_ledger_operation_ever_scans(ledger, dynamodb):
    calls = record_calls(dynamodb)
    record = stored(event(sequencer="01", version_id="v"))
    ledger.record(record)
    ledger.record(record)
    ledger.latest(BUCKET, record.key)
    ledger.get_version(BUCKET, record.key, record.version_token)
    ledger.versions(BUCKET, record.key)
    list(ledger.keys(BUCKET, "reports/"))
    assert calls.operations()
    assert "Scan" not in calls.operations()


def test_unicode_and_hostile_keys_are_just_data(ledger):
    keys = ["ünïcødé/✓ data.csv", "../../etc/passwd", "with space+plus%25.txt"]
    for key in keys:
        ledger.record(stored(event(key)))
    assert sorted(r.key for r in ledger.keys(BUCKET)) == sorted(keys)


# -- failures are classified ----------------------------------------------------------------


def test_throttling_is_retryable(ledger, dynamodb):
    inject(dynamodb, Fault("PutItem", "ProvisionedThroughputExceededException"))
    with pytest.raises(RetryableError, match="ProvisionedThroughputExceededException"):
        ledger.record(stored(event()))


def test_access_denied_is_permanent(ledger, dynamodb):
    inject(dynamodb, Fault("GetItem", "AccessDeniedException"))
    with pytest.raises(PermanentError, match="AccessDeniedException"):
        ledger.latest(BUCKET, "reports/q1.txt")


def test_a_failure_advancing_latest_is_raised_and_a_redelivery_repairs_it(ledger, dynamodb):
    inject(
        dynamodb,
        Fault(
            "PutItem",
            "InternalServerError",
            status=500,
            when=lambda params: params["Item"]["sk"]["S"] == "LATEST",
            times=1,
        ),
    )
    record = stored(event(version_id="v"))
    with pytest.raises(RetryableError):
        ledger.record(record)
    assert ledger.latest(BUCKET, record.key) is None
    assert ledger.record(record) is False  # the version was already in
    assert ledger.latest(BUCKET, record.key) == record


# -- tables written by the previous release (order keys "s<sequencer>" / "e<time>") ---------


def old_release_item(record: VersionRecord, sk: str, order_key: str) -> dict:
    from boto3.dynamodb.types import TypeSerializer

    fields = {**record.to_dict(), "order_key": order_key, "pk": f"{BUCKET}/{record.key}"}
    fields["sk"] = sk
    if sk == "LATEST":
        fields |= {"gsi_bucket": BUCKET, "gsi_key": record.key}
    return {k: TypeSerializer().serialize(v) for k, v in fields.items()}


def test_a_table_of_the_previous_release_is_read_in_todays_order(ledger, dynamodb):
    """v1 came through an event ("s…"), v2, a second later, through reconcile ("e…"): the
    previous release sorted every "s" after every "e" and its LATEST may say v1."""
    v1 = stored(event(sequencer="10", version_id="v1"))
    v2 = stored(event(time=T0 + timedelta(seconds=1), version_id="v2"))
    old_keys = {"v1": "s" + "10".ljust(64, "0"), "v2": "e20261123T100001.000000Z"}
    for record in (v1, v2):
        item = old_release_item(record, "V#" + record.version_token, old_keys[record.version_id])
        dynamodb.put_item(TableName=TABLE, Item=item)
    dynamodb.put_item(TableName=TABLE, Item=old_release_item(v1, "LATEST", old_keys["v1"]))

    assert [r.version_id for r in ledger.versions(BUCKET, v1.key)] == ["v1", "v2"]
    assert ledger.latest(BUCKET, v1.key) == v2
    assert list(ledger.keys(BUCKET)) == [v2]
    raw = dynamodb.get_item(
        TableName=TABLE, Key={"pk": {"S": f"{BUCKET}/{v1.key}"}, "sk": {"S": "LATEST"}}
    )
    assert raw["Item"]["order_key"]["S"] == old_keys["v1"]  # reading wrote nothing


def test_the_first_write_after_the_upgrade_rewrites_an_old_latest(ledger, dynamodb):
    v2 = stored(event(sequencer="20", version_id="v2"))
    dynamodb.put_item(TableName=TABLE, Item=old_release_item(v2, "V#v:v2", "s20"))
    dynamodb.put_item(TableName=TABLE, Item=old_release_item(v2, "LATEST", "s20"))
    ledger.record(stored(event(sequencer="10", version_id="v1")))  # a late, older event
    raw = dynamodb.get_item(
        TableName=TABLE, Key={"pk": {"S": f"{BUCKET}/{v2.key}"}, "sk": {"S": "LATEST"}}
    )
    assert raw["Item"]["order_key"]["S"] == v2.order_key and v2.order_key.startswith("2:")
    assert ledger.latest(BUCKET, v2.key) == v2


# -- a version removed for good, its put recorded late by another process ------------------
# A fleet shares one queue, and an agent restarts: the removal of a version and its late put
# can be recorded by two Ledger objects, and the one that remembered the removal
# (`_was_removed`) is not the one that sees the put. LATEST moved to the removed version, so
# `--prefix`/`--all` restores and `list` brought it back while `--key` (the history) did not
# (a review, 2026-12-02). Each test failed before.


@pytest.mark.parametrize("batched", [False, True], ids=["record", "record_many"])
def test_a_removed_version_recorded_late_by_another_process_does_not_become_latest(
    dynamodb, batched
):
    here, there = Ledger(dynamodb, TABLE), Ledger(dynamodb, TABLE)
    here.record(stored(event(sequencer="10", version_id="v1")))
    there.record(tombstone(event(sequencer="30", version_id="v2", kind=EventKind.REMOVED)))
    late = stored(event(sequencer="20", version_id="v2"))  # its put, late
    if batched:
        assert here.record_many([late]) == [True]
    else:
        here.record(late)

    latest = here.latest(BUCKET, "reports/q1.txt")
    assert latest is not None and latest.version_id == "v1"
    assert latest == history.current(here.versions(BUCKET, "reports/q1.txt"))


def test_a_live_version_older_than_a_removal_and_newer_than_latest_becomes_latest(dynamodb):
    """The mark that stops a removed version's late put must not stop a live one: v2 came
    late, after v3 was put and removed; v2 is what S3 serves. (It held before the fix: it
    guards the fix against refusing too much.)"""
    here, there = Ledger(dynamodb, TABLE), Ledger(dynamodb, TABLE)
    here.record(stored(event(sequencer="10", version_id="v1")))
    there.record(stored(event(sequencer="30", version_id="v3")))
    there.record(tombstone(event(sequencer="40", version_id="v3", kind=EventKind.REMOVED)))
    here.record(stored(event(sequencer="20", version_id="v2")))

    latest = here.latest(BUCKET, "reports/q1.txt")
    assert latest is not None and latest.version_id == "v2"
    assert latest == history.current(here.versions(BUCKET, "reports/q1.txt"))


def test_a_new_version_after_a_removal_advances_latest_as_before(dynamodb):
    here, there = Ledger(dynamodb, TABLE), Ledger(dynamodb, TABLE)
    here.record(stored(event(sequencer="10", version_id="v1")))
    there.record(tombstone(event(sequencer="30", version_id="v2", kind=EventKind.REMOVED)))
    calls = record_calls(dynamodb)
    here.record(stored(event(sequencer="50", version_id="v4")))
    assert calls.operations() == ["PutItem", "PutItem"]  # the version, LATEST: no settle

    latest = here.latest(BUCKET, "reports/q1.txt")
    assert latest is not None and latest.version_id == "v4"


def test_a_removal_of_a_version_below_latest_writes_latest_no_more_than_before(dynamodb):
    """S3 Lifecycle's noncurrent-version expiration removes old versions one per overwrite:
    their late put is refused by the order already, so no mark, no second write of LATEST
    (the session's review measured one per removal in the first form of the fix)."""
    ledger = Ledger(dynamodb, TABLE)
    ledger.record(stored(event(sequencer="10", version_id="v1")))
    ledger.record(stored(event(sequencer="20", version_id="v2")))
    calls = record_calls(dynamodb)
    ledger.record(tombstone(event(sequencer="30", version_id="v1", kind=EventKind.REMOVED)))
    assert calls.operations() == ["PutItem", "Query"]  # the removal, the settle's read
    latest = dynamodb.get_item(
        TableName=TABLE, Key={"pk": {"S": f"{BUCKET}/reports/q1.txt"}, "sk": {"S": "LATEST"}}
    )
    assert "settled_through" not in latest["Item"]


def test_a_mark_that_is_no_string_is_settled_over(dynamodb):
    """LATEST is untrusted: a `settled_through` that is a number would refuse every advance
    (DynamoDB compares no N with an S)."""
    ledger = Ledger(dynamodb, TABLE)
    ledger.record(stored(event(sequencer="10", version_id="v1")))
    key = {"pk": {"S": f"{BUCKET}/reports/q1.txt"}, "sk": {"S": "LATEST"}}
    item = dynamodb.get_item(TableName=TABLE, Key=key)["Item"]
    dynamodb.put_item(TableName=TABLE, Item={**item, "settled_through": {"N": "1"}})

    assert ledger.settle(BUCKET, "reports/q1.txt") is not None
    assert "settled_through" not in dynamodb.get_item(TableName=TABLE, Key=key)["Item"]
