"""Retention with replicas in the ledger (moto): each holder releases its own hold.

Before: the first replica group whose retention expired a version deleted the shared
item, so the other groups' retention never saw it again (their journals never recorded
the expiry, their gc never freed their copies) and the ledger lost a copy that exists.
Now a release removes this volume's hold only (its group's entry; `volume_id` moves to a
holder left when it named this volume), conditionally on the holders being the ones read,
and the member whose release leaves no holder deletes the item (docs/fleet.md
"Replicas"). And `reorder` (reconcile's correction, a whole-item PutItem) keeps a holder
another group added after the record was read.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from agent.records import VersionRecord
from agent.storage.ledger import Ledger, Written, table_definition
from tests.unit.test_ledger_holders import TABLE, raw_item, read_back, stored

G1, G2, G3 = "backup-events-1", "backup-events-2", "backup-events-3"
VOLUMES = {G1: "vol-a", G2: "vol-b", G3: "vol-c"}


@pytest.fixture
def dynamodb() -> Iterator[object]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition(TABLE))
        yield client


def later(record: VersionRecord) -> str:
    """Another valid place in the order (sequencer 0B instead of 0A)."""
    assert ":s0A" in record.order_key
    return record.order_key.replace(":s0A", ":s0B")


def member(dynamodb, group: str) -> Ledger:
    return Ledger(dynamodb, TABLE, group=group, volume_id=VOLUMES[group])


def held_by_groups(dynamodb, *groups: str, version_id: str = "v1") -> VersionRecord:
    for group in groups:
        assert member(dynamodb, group).record(stored(VOLUMES[group], version_id))
    read = read_back(dynamodb, version_id)
    assert read is not None
    return read


def test_the_first_holder_releasing_leaves_the_item_to_the_other_and_moves_volume_id(dynamodb):
    record = held_by_groups(dynamodb, G1, G2)
    assert record.volume_id == "vol-a"

    assert member(dynamodb, G1).release(record, "vol-a") is False  # b still holds it

    left = read_back(dynamodb)
    assert left is not None and left.holders == {G2: "vol-b"}
    assert left.volume_id == "vol-b"  # older readers (volume_id only) see a real holder
    assert left.holder_volumes() == ["vol-b"]

    assert member(dynamodb, G2).release(left, "vol-b") is True
    assert read_back(dynamodb) is None


def test_the_second_holder_releasing_first_leaves_volume_id_as_it_was(dynamodb):
    record = held_by_groups(dynamodb, G1, G2)

    assert member(dynamodb, G2).release(record, "vol-b") is False

    left = read_back(dynamodb)
    assert left is not None and (left.volume_id, left.holders) == ("vol-a", {G1: "vol-a"})
    # a stale read (both holders) is refused, read again, and found to be the last one
    assert member(dynamodb, G1).release(record, "vol-a") is True
    assert read_back(dynamodb) is None


def test_releases_racing_between_read_and_write_delete_the_item_exactly_once(dynamodb):
    """Both groups read the item holding both; b's release lands between a's read and
    a's write: a's update is refused, a reads again, sees itself last and deletes."""
    record = held_by_groups(dynamodb, G1, G2)
    raced: list[bool] = []

    def the_other_releases_first(params, **_):
        if not raced:
            raced.append(True)  # before the call: the hook sees the other's request too
            raced.append(member(dynamodb, G2).release(record, "vol-b"))

    dynamodb.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem", the_other_releases_first
    )
    assert member(dynamodb, G1).release(record, "vol-a") is True
    assert raced == [True, False]  # b was not last when it released
    assert read_back(dynamodb) is None


def test_a_delete_raced_by_a_new_holder_releases_only_this_hold(dynamodb):
    """a reads itself as the only holder; b adds itself before a's delete lands: the
    delete is refused and a releases its entry only."""
    record = held_by_groups(dynamodb, G1)
    raced: list[bool] = []

    def the_other_adds_itself_first(params, **_):
        if not raced:
            raced.append(True)
            raced.append(member(dynamodb, G2).record(stored("vol-b")))

    dynamodb.meta.events.register(
        "provide-client-params.dynamodb.DeleteItem", the_other_adds_itself_first
    )
    assert member(dynamodb, G1).release(record, "vol-a") is False

    left = read_back(dynamodb)
    assert raced == [True, True] and left is not None
    assert (left.volume_id, left.holders) == ("vol-b", {G2: "vol-b"})


def test_a_release_writes_only_the_key_holders_and_volume_id(dynamodb):
    record = held_by_groups(dynamodb, G1, G2)
    before = raw_item(dynamodb, record)

    member(dynamodb, G1).release(record, "vol-a")

    after = raw_item(dynamodb, record)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"holders", "volume_id"}


def test_a_volume_not_holding_the_version_releases_nothing(dynamodb):
    record = held_by_groups(dynamodb, G1, G2)

    assert member(dynamodb, G3).release(record, "vol-c") is False
    assert member(dynamodb, G1).release(record, "vol-a") is False
    assert member(dynamodb, G1).release(record, "vol-a") is False  # a retry: released already

    left = read_back(dynamodb)
    assert left is not None and left.holders == {G2: "vol-b"}


def test_an_item_of_an_older_release_is_deleted_by_its_volume(dynamodb):
    Ledger(dynamodb, TABLE).record(stored("vol-a"))
    record = read_back(dynamodb)
    assert record is not None and record.holders is None

    assert member(dynamodb, G1).release(record, "vol-a") is True
    assert read_back(dynamodb) is None


def test_an_older_items_volume_outside_any_group_keeps_its_hold(dynamodb):
    """An older release's item (volume_id vol-old, no map) got group 2's holder: vol-b
    releasing leaves the older item as it was; vol-old releasing then deletes it."""
    Ledger(dynamodb, TABLE).record(stored("vol-old"))
    assert member(dynamodb, G2).record(stored("vol-b"))
    record = read_back(dynamodb)
    assert record is not None and record.holder_volumes() == ["vol-old", "vol-b"]

    assert member(dynamodb, G2).release(record, "vol-b") is False

    left = read_back(dynamodb)
    assert left is not None and (left.volume_id, left.holders) == ("vol-old", None)
    assert Ledger(dynamodb, TABLE, volume_id="vol-old").release(left, "vol-old") is True
    assert read_back(dynamodb) is None


@st.composite
def histories(draw: st.DrawFn) -> list[tuple[str, str]]:
    kinds = st.sampled_from(["add", "lost-add", "release", "stale-release"])
    steps = st.tuples(kinds, st.sampled_from([G1, G2, G3]))
    return draw(st.lists(steps, min_size=1, max_size=12))


EXAMPLES = itertools.count()


class _LostVersionAnswers:
    """The client, except that each write of a version item is sent twice and the caller
    sees the second answer: the first response lost (a read timeout, a 500), and botocore
    sent it again."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_item(self, **kwargs: Any) -> Any:
        if kwargs["Item"]["sk"]["S"].startswith("V#"):
            self._client.put_item(**kwargs)
        return self._client.put_item(**kwargs)

    def update_item(self, **kwargs: Any) -> Any:
        self._client.update_item(**kwargs)
        return self._client.update_item(**kwargs)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps=histories())
def test_the_item_goes_exactly_when_its_last_holder_releases(dynamodb, steps):
    """Any order of holder adds and releases, each release from a fresh read or from the
    first read that showed the group holding (stale by then, as a retention run's read
    can be): the item lists exactly the holders not released, and a release returns True
    exactly when the item is gone after it (deleted by it, its holder the last, or found
    gone: a release sent again after a lost answer must say so, or retention keeps the
    key's LATEST for ever). An add is fresh exactly when its group held nothing, and
    HELD otherwise, its answer lost or not (the retry of an add whose first request went
    through is refused by it: the commit stage must still see the item naming its
    volume, the lost-answer review, 2026-12-02). One table, a key per example."""
    key = f"prop/{next(EXAMPLES)}.txt"
    holding: set[str] = set()
    first_read: dict[str, VersionRecord] = {}
    for kind, group in steps:
        volume = VOLUMES[group]
        if kind in ("add", "lost-add"):
            client = _LostVersionAnswers(dynamodb) if kind == "lost-add" else dynamodb
            ledger = Ledger(client, TABLE, group=group, volume_id=volume)
            written = ledger.write(stored(volume, key=key))
            fresh = group not in holding and kind == "add"
            assert written is (Written.FRESH if fresh else Written.HELD)
            holding.add(group)
        else:
            seen = (
                first_read.get(group) if kind == "stale-release" else read_back(dynamodb, key=key)
            )
            if seen is None or volume not in seen.holder_volumes():
                continue  # retention releases only what its read shows this volume holding
            gone = member(dynamodb, group).release(seen, volume)
            holding.discard(group)
            assert gone == (not holding)
        read = read_back(dynamodb, key=key)
        if not holding:
            assert read is None
            continue
        assert read is not None
        assert sorted(read.holder_volumes()) == sorted(VOLUMES[g] for g in holding)
        assert read.volume_id in read.holder_volumes()
        for g in holding:
            first_read.setdefault(g, read)


def test_reorder_keeps_a_holder_added_after_the_record_was_read(dynamodb):
    """Reconcile read the version held by group 1; group 2 adds itself before the
    correction is written: the whole-item PutItem is refused, read again and written
    with both holders."""
    record = held_by_groups(dynamodb, G1)
    raced: list[bool] = []

    def the_other_adds_itself_first(params, **_):
        if not raced and params.get("Item", {}).get("sk", {}).get("S", "").startswith("V#"):
            raced.append(True)
            raced.append(member(dynamodb, G2).record(stored("vol-b")))

    dynamodb.meta.events.register(
        "provide-client-params.dynamodb.PutItem", the_other_adds_itself_first
    )
    member(dynamodb, G1).reorder(record, later(record))

    moved = read_back(dynamodb)
    assert raced == [True, True] and moved is not None
    assert moved.order_key == later(record)
    assert moved.holders == {G1: "vol-a", G2: "vol-b"}


def test_reorder_of_a_stale_record_keeps_the_holders_in_the_table(dynamodb):
    stale = held_by_groups(dynamodb, G1)
    held_by_groups(dynamodb, G2)

    Ledger(dynamodb, TABLE).reorder(stale, later(stale))  # the operator's reconcile

    moved = read_back(dynamodb)
    assert moved is not None and moved.order_key == later(stale)
    assert moved.holders == {G1: "vol-a", G2: "vol-b"}
    assert dataclasses.replace(moved, order_key=stale.order_key) == stale
