"""The sharded `by-key` index: a key's shard is stable, partitions are told apart, and the
merge of the partitions' streams is the sorted set of keys, lazily."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from hypothesis import given
from hypothesis import strategies as st

from agent.storage import key_index
from agent.storage.key_index import SHARDS, item_key, merged, partition, partitions, shard_of

BUCKET = "company-documents"
KEYS = st.text(alphabet=st.sampled_from("ab/-.é✓"), max_size=6)


def test_the_shard_is_crc32_of_the_utf8_key_so_every_process_agrees():
    # fixed values: a change here changes where every existing LATEST is indexed
    assert shard_of("reports/q1.txt") == zlib.crc32(b"reports/q1.txt") % 16
    assert [shard_of(k) for k in ("a", "b", "ünïcødé/✓ data.csv")] == [
        zlib.crc32(k.encode()) % 16 for k in ("a", "b", "ünïcødé/✓ data.csv")
    ]
    assert SHARDS == 16


def test_a_partition_names_its_bucket_and_shard_and_never_another_bucket():
    assert partition(BUCKET, "a") == f"{BUCKET}#{zlib.crc32(b'a') % 16}"
    values = partitions(BUCKET)
    assert len(values) == SHARDS + 1 and len(set(values)) == SHARDS + 1
    assert values[-1] == BUCKET  # the unsharded partition an older release wrote, read last
    # S3 bucket names hold no "#": a sharded value never equals a bucket's name
    assert all("#" in v for v in values[:-1])


def test_is_unsharded_tells_the_older_form_apart():
    assert key_index.is_unsharded({"gsi_bucket": {"S": BUCKET}}, BUCKET)
    assert not key_index.is_unsharded(key_index.index_fields(BUCKET, "a"), BUCKET)
    assert not key_index.is_unsharded({}, BUCKET)


def _item(key: str, tag: str = "") -> dict[str, object]:
    return {"gsi_key": {"S": key}, "tag": tag}


def _shard_streams(keys: set[str], pulled: list[int]) -> list[Iterator[dict[str, object]]]:
    def stream(index: int, items: list[str]) -> Iterator[dict[str, object]]:
        for key in items:
            pulled[index] += 1
            yield _item(key)

    by_shard: list[list[str]] = [[] for _ in range(SHARDS)]
    for key in keys:
        by_shard[shard_of(key)].append(key)
    return [stream(i, sorted(items)) for i, items in enumerate(by_shard)]


@given(keys=st.sets(KEYS, max_size=40), prefix=KEYS)
def test_the_merge_is_the_sorted_keys_under_the_prefix(keys, prefix):
    pulled = [0] * SHARDS
    streams = _shard_streams({k for k in keys if k.startswith(prefix)}, pulled)
    assert [item_key(i) for i in merged(streams, prefix)] == sorted(
        k for k in keys if k.startswith(prefix)
    )


@given(keys=st.sets(KEYS, min_size=1, max_size=40))
def test_the_merge_is_lazy_one_item_ahead_per_stream(keys):
    pulled = [0] * SHARDS
    first = next(merged(_shard_streams(keys, pulled), ""))
    assert item_key(first) == min(keys)
    assert all(n <= 1 for n in pulled)  # nothing read past the head of any stream


def test_a_key_in_two_partitions_is_yielded_once_the_sharded_copy_first():
    sharded = iter([_item("a", "new"), _item("c", "new")])
    unsharded = iter([_item("a", "old"), _item("b", "old")])
    out = list(merged([sharded, unsharded], ""))
    assert [(item_key(i), i["tag"]) for i in out] == [("a", "new"), ("b", "old"), ("c", "new")]


def test_each_stream_stops_at_its_first_key_past_the_prefix():
    def stream() -> Iterator[dict[str, object]]:
        yield _item("p/1")
        yield _item("q")
        raise AssertionError("read past the prefix")

    assert [item_key(i) for i in merged([stream()], "p/")] == ["p/1"]


def test_the_key_condition_is_the_one_partition_query_of_before():
    assert key_index.key_condition("b#3", "", "") == {
        "KeyConditionExpression": "gsi_bucket = :b",
        "ExpressionAttributeValues": {":b": {"S": "b#3"}},
    }
    under = key_index.key_condition("b#3", "p/", "")
    assert under["KeyConditionExpression"].endswith("begins_with(gsi_key, :p)")
    after = key_index.key_condition("b#3", "p/", "p/x")
    assert after["KeyConditionExpression"].endswith("gsi_key > :a")
    before = key_index.key_condition("b#3", "p/", "a")  # `after` before the prefix: ignored
    assert before["KeyConditionExpression"].endswith("begins_with(gsi_key, :p)")
