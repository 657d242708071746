"""Replica groups in the ledger (moto): each version names one holder per group.

`fleet.replicas: R` fans every event out to R queues, one per replica group; each group's
agents write the version with the group's holder. The first write creates the item
(`attribute_not_exists(pk)`), each other group adds itself with one UpdateItem conditional
on `attribute_not_exists(holders.#g)`: exactly one volume per group, whatever the order,
and a duplicate in a group is a no-op (docs/fleet.md "Replicas").
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.records import VersionRecord, validated
from agent.storage.ledger import Ledger, object_pk, parse_item
from tests.support.aws_hooks import record_calls
from tests.support.ledger_table import BUCKET, TABLE, ledger_table, stored_version


@pytest.fixture
def dynamodb() -> Iterator[object]:
    with ledger_table() as client:
        yield client


def stored(volume_id: str, version_id: str = "v1", key: str = "reports/q1.txt") -> VersionRecord:
    return stored_version(key, version_id, "0A", volume_id=volume_id)


def raw_item(dynamodb, record: VersionRecord) -> dict:
    return dynamodb.get_item(
        TableName=TABLE,
        Key={
            "pk": {"S": object_pk(record.bucket, record.key)},
            "sk": {"S": "V#" + record.version_token},
        },
        ConsistentRead=True,
    )["Item"]


def read_back(
    dynamodb, version_id: str = "v1", key: str = "reports/q1.txt"
) -> VersionRecord | None:
    token = stored("vol-any", version_id, key).version_token
    return Ledger(dynamodb, TABLE).get_version(BUCKET, key, token)


def member(dynamodb, group: str, volume: str) -> Ledger:
    return Ledger(dynamodb, TABLE, group=group, volume_id=volume)


def test_the_first_group_writes_the_item_naming_itself_and_volume_id_stays_its_volume(dynamodb):
    assert member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))

    item = raw_item(dynamodb, stored("vol-a"))
    assert item["volume_id"] == {"S": "vol-a"}
    assert item["holders"] == {"M": {"backup-events-1": {"S": "vol-a"}}}


def test_a_second_group_adds_its_holder_and_old_readers_still_see_the_first(dynamodb):
    assert member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    assert member(dynamodb, "backup-events-2", "vol-b").record(stored("vol-b"))

    read = read_back(dynamodb)
    assert read is not None
    assert read.volume_id == "vol-a"  # what a reader of an older release uses
    assert read.holders == {"backup-events-1": "vol-a", "backup-events-2": "vol-b"}
    assert read.holder_volumes() == ["vol-a", "vol-b"]


def test_a_duplicate_in_the_same_group_is_a_no_op_whichever_volume_it_comes_from(dynamodb):
    assert member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    assert not member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    assert not member(dynamodb, "backup-events-1", "vol-c").record(stored("vol-c"))

    read = read_back(dynamodb)
    assert read is not None and read.holders == {"backup-events-1": "vol-a"}


def test_a_holder_write_is_one_conditional_update_of_the_groups_entry_only(dynamodb):
    member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    second = member(dynamodb, "backup-events-2", "vol-b")

    calls = record_calls(dynamodb)
    assert second._put_version(stored("vol-b"))

    updates = calls.of("UpdateItem")
    assert len(updates) == 1
    assert updates[0]["UpdateExpression"] == "SET holders.#g = :volume"
    assert "attribute_not_exists(holders.#g)" in updates[0]["ConditionExpression"]
    assert updates[0]["ExpressionAttributeNames"] == {"#g": "backup-events-2"}


def test_a_record_read_back_and_recorded_again_adds_no_holder(dynamodb):
    """LATEST after a crash: `record(known)` of another volume's record must not make that
    volume this group's holder."""
    member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    known = read_back(dynamodb)
    assert known is not None

    assert not member(dynamodb, "backup-events-2", "vol-b").record(known)

    assert raw_item(dynamodb, known)["holders"] == {"M": {"backup-events-1": {"S": "vol-a"}}}


def test_an_item_of_an_older_release_gets_the_map_without_losing_its_volume(dynamodb):
    Ledger(dynamodb, TABLE).record(stored("vol-old"))  # no replicas: no holders
    assert "holders" not in raw_item(dynamodb, stored("vol-old"))

    assert member(dynamodb, "backup-events-2", "vol-b").record(stored("vol-b"))
    assert member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    assert not member(dynamodb, "backup-events-1", "vol-c").record(stored("vol-c"))

    read = read_back(dynamodb)
    assert read is not None and read.volume_id == "vol-old"
    assert read.holders == {"backup-events-2": "vol-b", "backup-events-1": "vol-a"}
    assert read.holder_volumes() == ["vol-old", "vol-b", "vol-a"]


def test_an_older_item_naming_this_very_volume_is_not_written_again(dynamodb):
    Ledger(dynamodb, TABLE).record(stored("vol-a"))
    calls = record_calls(dynamodb)
    assert not member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))
    assert not calls.of("UpdateItem")


def test_without_replicas_nothing_changes(dynamodb):
    ledger = Ledger(dynamodb, TABLE, volume_id="vol-a")  # no group
    assert ledger.record(stored("vol-a"))
    assert not Ledger(dynamodb, TABLE, volume_id="vol-b").record(stored("vol-b"))
    assert "holders" not in raw_item(dynamodb, stored("vol-a"))


@pytest.mark.parametrize(
    ("holders", "reason"),
    [
        ("vol-a", "holders is not a map"),
        ({}, "holders is not a map"),
        ({"backup events": "vol-a"}, "no queue name"),
        ({"backup-events-1": 7}, "is not a volume id"),
        ({"backup-events-1": ""}, "is not a volume id"),
        ({"backup-events-1": "vol\x00a"}, "holds a NUL"),
        ({f"q-{n}": "vol-a" for n in range(33)}, "holders is not a map"),
    ],
)
def test_a_malformed_holders_map_rejects_the_record(holders, reason):
    data = {**stored("vol-a").to_dict(), "holders": holders}
    problem = validated(data)
    assert isinstance(problem, str) and reason in problem


def test_a_malformed_holders_item_is_repaired_by_the_next_write(dynamodb):
    item = Ledger(dynamodb, TABLE)._item(stored("vol-x"), "V#v1")
    item["holders"] = {"S": "not a map"}
    dynamodb.put_item(TableName=TABLE, Item=item)
    assert not isinstance(parse_item(item), VersionRecord)

    assert member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))

    read = read_back(dynamodb)
    assert read is not None and read.holders == {"backup-events-1": "vol-a"}


def test_holders_are_not_part_of_a_records_identity():
    record = stored("vol-a")
    assert dataclasses.replace(record, holders={"q-1": "vol-a"}) == record


# -- any interleaving ---------------------------------------------------------------------
GROUPS = ["backup-events-1", "backup-events-2", "backup-events-3"]


@st.composite
def interleavings(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """Puts of versions v0…v3 by agents (group, volume): every group's agents put every
    version at least once, in any order, some more than once (redeliveries, duplicates
    in a group, from either of its two volumes)."""
    groups = draw(st.integers(1, len(GROUPS)))
    agents = [(GROUPS[g], f"vol-{g}{n}") for g in range(groups) for n in range(2)]
    puts = [
        (group, volume, f"v{v}") for v in range(4) for group, volume in agents if volume[-1] == "0"
    ]
    puts += draw(
        st.lists(
            st.tuples(st.sampled_from(agents), st.sampled_from([f"v{v}" for v in range(4)])).map(
                lambda t: (t[0][0], t[0][1], t[1])
            ),
            max_size=12,
        )
    )
    return draw(st.permutations(puts))


def test_any_interleaving_leaves_exactly_one_holder_per_group():
    with ledger_table() as dynamodb:  # one table for every example (each on a key of its own)
        examples = itertools.count()

        @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(puts=interleavings())
        def check(puts: list[tuple[str, str, str]]) -> None:
            key = f"reports/example-{next(examples)}.txt"
            fresh: dict[tuple[str, str], list[str]] = {}
            for group, volume, version in puts:
                if member(dynamodb, group, volume).record(stored(volume, version, key)):
                    fresh.setdefault((group, version), []).append(volume)

            groups = {group for group, _, _ in puts}
            for version in {version for _, _, version in puts}:
                read = read_back(dynamodb, version, key)
                assert read is not None and read.holders is not None
                assert set(read.holders) == groups
                for group in groups:
                    # the one put that returned True in each group is the holder it names
                    assert fresh[(group, version)] == [read.holders[group]]
                assert read.volume_id in read.holders.values()

        check()


def test_a_group_racing_another_on_an_older_item_adds_itself_after_the_other(dynamodb):
    """Two groups meet an item of an older release at once: one creates the map, the
    other's `SET holders = :holders` is refused and it adds its entry to that map."""
    Ledger(dynamodb, TABLE).record(stored("vol-old"))
    raced = []

    def the_other_group_first(params, **_):
        if params.get("UpdateExpression") == "SET holders = :holders" and not raced:
            raced.append(True)
            assert member(dynamodb, "backup-events-1", "vol-a").record(stored("vol-a"))

    dynamodb.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem", the_other_group_first
    )
    assert member(dynamodb, "backup-events-2", "vol-b").record(stored("vol-b"))

    read = read_back(dynamodb)
    assert raced and read is not None
    assert read.holders == {"backup-events-1": "vol-a", "backup-events-2": "vol-b"}


class _LostDeleteResponse:
    """The client, except that each DeleteItem is sent twice and the caller sees the second
    answer: the first response lost (a read timeout, a 500), and botocore sent it again."""

    def __init__(self, client: object) -> None:
        self._client = client

    def __getattr__(self, name: str) -> object:
        return getattr(self._client, name)

    def delete_item(self, **kwargs: object) -> object:
        self._client.delete_item(**kwargs)  # type: ignore[attr-defined]
        return self._client.delete_item(**kwargs)  # type: ignore[attr-defined]


@pytest.mark.parametrize("group", [None, "backup-events-1"])
def test_a_last_release_sent_again_after_a_lost_response_still_says_the_item_is_gone(
    dynamodb, group
):
    """The retry was refused with no item, and release said it deleted nothing: retention
    then kept the key's LATEST (a delete marker) for ever (the fleet review, 2026-12-02)."""
    record = stored_version("reports/q1.txt", "v1", "0A", volume_id="vol-a")
    assert Ledger(dynamodb, TABLE, group=group, volume_id="vol-a").record(record)
    seen = Ledger(dynamodb, TABLE).get_version(record.bucket, record.key, record.version_token)
    assert seen is not None
    ledger = Ledger(_LostDeleteResponse(dynamodb), TABLE, group=group, volume_id="vol-a")

    assert ledger.release(seen, "vol-a")
    assert Ledger(dynamodb, TABLE).get_version(BUCKET, record.key, record.version_token) is None


def test_a_holder_added_as_the_other_groups_last_release_deletes_the_item_makes_it_again(
    dynamodb,
):
    """Group 2's member copied v1 and records it: its PutItem is refused (group 1's item),
    then group 1's retention releases the last hold (item and LATEST deleted) before group
    2's UpdateItem. That said False: no item named the version vol-b holds (its copy kept
    for ever) and LATEST pointed at it (the fleet review, 2026-12-02). The item is made
    again, naming group 2, for its own retention to expire."""
    groups = ("backup-events-1", "backup-events-2")
    a = Ledger(dynamodb, TABLE, group=groups[0], volume_id="vol-a")
    b = Ledger(dynamodb, TABLE, group=groups[1], volume_id="vol-b")
    v_a = stored_version("reports/q1.txt", "v1", "0A", volume_id="vol-a")
    assert a.record(v_a)
    seen = a.get_version(v_a.bucket, v_a.key, v_a.version_token)
    assert seen is not None
    ran: list[bool] = []

    def a_retention_in_between(**_: object) -> None:
        if not ran:
            ran.append(True)
            assert a.release(seen, "vol-a")  # the last hold: the item deleted
            assert a.delete_latest(v_a.bucket, v_a.key, v_a.version_token)

    dynamodb.meta.events.register(
        "provide-client-params.dynamodb.UpdateItem", a_retention_in_between
    )
    assert b.record(stored_version("reports/q1.txt", "v1", "0A", volume_id="vol-b"))

    reader = Ledger(dynamodb, TABLE)
    item = reader.get_version(v_a.bucket, v_a.key, v_a.version_token)
    assert item is not None and item.holder_volumes() == ["vol-b"]
    latest = reader.latest(v_a.bucket, v_a.key)
    assert latest is not None and latest.version_token == v_a.version_token
