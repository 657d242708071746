"""`Ledger.keys` over the sharded `by-key` index (moto): one Query per shard page, merged in
key order, over tables holding sharded items, items in the older unsharded form
(`gsi_bucket` = the bucket name, as every release before this one wrote) or both.

Pages are made small by adding `Limit` to each Query through a botocore hook: DynamoDB
then stops at `Limit` items and returns a `LastEvaluatedKey`, as it does at 1 MB in
production, so a partition of n items takes n // limit + 1 Queries (the last one empty
when n is a multiple of the limit). moto differs: it leaves `LastEvaluatedKey` out when
nothing follows, saving that empty page (docs/testing.md); the count test accepts both.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from agent.records import VersionRecord
from agent.storage import key_index
from agent.storage.ledger import Ledger, table_definition
from tests.support.record_fields import numbered_record

BUCKET = "company-documents"
OTHER = "company-documents-2"  # a neighbour whose name starts with BUCKET's
KEYS = st.text(alphabet=st.sampled_from("ab/.-é✓"), min_size=1, max_size=5)
_tables = itertools.count()


@pytest.fixture(scope="module")
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


def fresh_table(dynamodb: Any) -> str:
    name = f"objects-{next(_tables)}"
    dynamodb.create_table(**table_definition(name))
    return name


def record(key: str, n: int = 1, bucket: str = BUCKET) -> VersionRecord:
    return numbered_record(bucket, key, n)


def write_unsharded(dynamodb: Any, table: str, rec: VersionRecord) -> None:
    """The version and LATEST items exactly as the previous release wrote them."""
    body = {k: TypeSerializer().serialize(v) for k, v in rec.to_dict().items()}
    pk = {"S": f"{rec.bucket}/{rec.key}"}
    dynamodb.put_item(
        TableName=table, Item={**body, "pk": pk, "sk": {"S": "V#" + rec.version_token}}
    )
    latest = {**body, "pk": pk, "sk": {"S": "LATEST"}}
    latest |= {"gsi_bucket": {"S": rec.bucket}, "gsi_key": {"S": rec.key}}
    dynamodb.put_item(TableName=table, Item=latest)


class Queries:
    """Every Query's (partition, ExclusiveStartKey); each limited to `limit` items."""

    def __init__(self, dynamodb: Any, limit: int) -> None:
        self.limit = limit
        self.calls: list[tuple[str, str | None]] = []
        self._client = dynamodb
        dynamodb.meta.events.register("provide-client-params.dynamodb.Query", self._seen)

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        params["Limit"] = self.limit
        start = params.get("ExclusiveStartKey")
        values = params["ExpressionAttributeValues"]
        self.calls.append((values[":b"]["S"], repr(start) if start else None))

    def close(self) -> None:
        self._client.meta.events.unregister("provide-client-params.dynamodb.Query", self._seen)


def build(dynamodb: Any, keys: set[str], unsharded: set[str]) -> tuple[str, Ledger]:
    table = fresh_table(dynamodb)
    ledger = Ledger(dynamodb, table)
    for n, key in enumerate(sorted(keys), start=1):
        if key in unsharded:
            write_unsharded(dynamodb, table, record(key, n))
        else:
            ledger.record(record(key, n))
    for n, key in enumerate(sorted(keys)[:3], start=1):  # the neighbour bucket: never listed
        ledger.record(record(key, n, bucket=OTHER))
    return table, ledger


def expected(keys: set[str], prefix: str, after: str) -> list[str]:
    return sorted(k for k in keys if k.startswith(prefix) and k > after)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.sets(KEYS, max_size=14),
    data=st.data(),
    page=st.integers(1, 4),
)
def test_listing_is_the_sorted_keys_for_any_prefix_after_and_limit(dynamodb, keys, data, page):
    """Sharded and unsharded items mixed: every listing (a prefix, a page start, a limit,
    and the pages a client walks with `after`) is the sorted set of keys it covers."""
    unsharded = data.draw(st.sets(st.sampled_from(sorted(keys))) if keys else st.just(set()))
    _table, ledger = build(dynamodb, keys, unsharded)
    queries = Queries(dynamodb, page)
    try:
        for _ in range(3):
            prefix = data.draw(
                st.sampled_from(["", *sorted({k[:i] for k in keys for i in (1, 2)})])
            )
            after = data.draw(st.one_of(st.just(""), KEYS))
            limit = data.draw(st.integers(1, 25))
            got = [r.key for r in itertools.islice(ledger.keys(BUCKET, prefix, after), limit)]
            assert got == expected(keys, prefix, after)[:limit]
            walked: list[str] = []
            start = ""
            while True:  # pages of `limit` keys, each resuming after the last key shown
                shown = [r.key for r in itertools.islice(ledger.keys(BUCKET, prefix, start), limit)]
                walked += shown
                if len(shown) < limit:
                    break
                start = shown[-1]
            assert walked == expected(keys, prefix, "")
    finally:
        queries.close()


def test_one_query_per_shard_page_and_none_asked_twice(dynamodb):
    keys = {f"k/{i:03}" for i in range(60)}
    unsharded = {f"k/{i:03}" for i in range(0, 60, 4)}
    _table, ledger = build(dynamodb, keys, unsharded)
    per_partition = Counter(
        BUCKET if k in unsharded else key_index.partition(BUCKET, k) for k in keys
    )
    queries = Queries(dynamodb, limit=3)
    try:
        listed = [r.key for r in ledger.keys(BUCKET, "k/")]
    finally:
        queries.close()

    assert listed == sorted(keys)
    assert len(set(queries.calls)) == len(queries.calls)  # no page read twice
    asked = Counter(value for value, _start in queries.calls)
    assert set(asked) == set(key_index.partitions(BUCKET))  # every shard, and the old form
    for value in key_index.partitions(BUCKET):
        pages = -(-per_partition[value] // 3)  # moto: no empty last page (see the top)
        assert max(pages, 1) <= asked[value] <= per_partition[value] // 3 + 1, value


def test_the_first_key_costs_each_partitions_first_page_and_at_most_one_ahead(dynamodb):
    """The partitions are read concurrently, one page ahead each (key_index.listing): by the
    first key every partition's first page was asked for once, and at most its second."""
    _table, ledger = build(dynamodb, {f"k/{i:03}" for i in range(60)}, set())
    queries = Queries(dynamodb, limit=2)
    try:
        keys = ledger.keys(BUCKET)
        first = next(keys)
        keys.close()
        assert first.key == "k/000"
        firsts = [value for value, start in queries.calls if start is None]
        assert sorted(firsts) == sorted(key_index.partitions(BUCKET))
        asked = Counter(value for value, _start in queries.calls)
        assert max(asked.values()) <= 2
    finally:
        queries.close()


def test_new_latest_items_are_written_to_their_shard(dynamodb):
    table = fresh_table(dynamodb)
    Ledger(dynamodb, table).record(record("reports/q1.txt"))
    item = dynamodb.get_item(
        TableName=table, Key={"pk": {"S": f"{BUCKET}/reports/q1.txt"}, "sk": {"S": "LATEST"}}
    )["Item"]
    assert item["gsi_bucket"] == {"S": key_index.partition(BUCKET, "reports/q1.txt")}
    assert item["gsi_key"] == {"S": "reports/q1.txt"}


def test_an_unsharded_latest_moves_to_its_shard_on_the_next_version(dynamodb):
    table = fresh_table(dynamodb)
    write_unsharded(dynamodb, table, record("a.txt", 1))
    ledger = Ledger(dynamodb, table)
    ledger.record(record("a.txt", 2))
    assert _unsharded_keys(dynamodb, table) == []
    assert [(r.key, r.version_id) for r in ledger.keys(BUCKET)] == [("a.txt", "v2")]


def _unsharded_keys(dynamodb: Any, table: str) -> list[str]:
    items = dynamodb.query(
        TableName=table,
        IndexName="by-key",
        KeyConditionExpression="gsi_bucket = :b",
        ExpressionAttributeValues={":b": {"S": BUCKET}},
    )["Items"]
    return [i["gsi_key"]["S"] for i in items]


def test_migration_moves_every_unsharded_latest_once_and_lists_the_same(dynamodb):
    keys = {f"d{i % 3}/f{i}" for i in range(20)}
    unsharded = {k for k in keys if k.endswith(("1", "4", "7"))}
    table, ledger = build(dynamodb, keys, unsharded)
    before = list(ledger.keys(BUCKET))

    assert ledger.migrate_key_index(BUCKET) == len(unsharded)
    assert _unsharded_keys(dynamodb, table) == []
    assert list(ledger.keys(BUCKET)) == before
    assert ledger.migrate_key_index(BUCKET) == 0  # nothing left: a second run writes nothing
    assert [r.key for r in ledger.keys(OTHER)] == sorted(keys)[:3]  # the neighbour untouched


def test_migration_never_overwrites_a_latest_that_moved_meanwhile(dynamodb):
    """The LATEST read from the (eventually consistent) index is rewritten only if it is
    still that LATEST: a newer version recorded between the read and the write wins."""
    table = fresh_table(dynamodb)
    write_unsharded(dynamodb, table, record("a.txt", 1))
    ledger = Ledger(dynamodb, table)
    other = boto3.client("dynamodb", region_name="us-east-1")
    newer = record("a.txt", 2)
    raced: list[bool] = []

    def advance_first(params: dict[str, Any], **_: Any) -> None:
        if not raced:
            raced.append(True)
            Ledger(other, table).record(newer)  # another agent, between read and write

    dynamodb.meta.events.register("provide-client-params.dynamodb.PutItem", advance_first)
    try:
        assert ledger.migrate_key_index(BUCKET) == 0
    finally:
        dynamodb.meta.events.unregister("provide-client-params.dynamodb.PutItem", advance_first)
    assert raced
    assert ledger.latest(BUCKET, "a.txt") == newer
    assert [r.version_id for r in ledger.keys(BUCKET)] == ["v2"]
