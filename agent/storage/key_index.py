"""The `by-key` index, sharded: where a LATEST item lands in it and how a listing reads it.

Every LATEST item carries two index attributes (their names, and so the table's key
schema, are those of the first release)::

    gsi_bucket = "<bucket>#<shard>"    shard = crc32(UTF-8 key) mod SHARDS, "0".."15"
    gsi_key    = "<key>"

Until this release `gsi_bucket` was the bucket name alone, so every LATEST write of a
bucket landed on one index partition: one partition key value takes at most 1,000 write
units a second, and a throttled index write throttles the table write that caused it
(docs/design.md, "Capacity at 1,000 objects/s"). With SHARDS partition key values a
bucket's LATEST writes spread over SHARDS index partitions.

**SHARDS is fixed in code, not a setting**: every agent and every tool of a release
computes the same shard for a key, so no two members of a fleet can disagree and no
table-level item has to be read before a write. A release that changes it must read both
counts while it migrates, as this one reads the unsharded form. S3 bucket names cannot
hold ``#``, so ``<bucket>#<shard>`` never equals another bucket's name, and an unsharded
value (``<bucket>``) is told apart by the missing ``#``.

"Keys under a prefix" is one Query per partition (the SHARDS shards, then the unsharded
partition an older release wrote, read while any item may remain in it: a Query that
finds nothing is one request, the same as reading a marker to skip it), merged in key
order (`merged`), lazily: a partition's next page is asked for only when the merge has
used its last item, so a listing costs one Query per partition page. A key's LATEST is
one item, so it is in one partition; while `unsharded` items are rewritten the index
(eventually consistent) may briefly show it in two, and the merge yields it once.
"""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

SHARDS = 16
SEPARATOR = "#"
BUCKET_ATTRIBUTE = "gsi_bucket"
KEY_ATTRIBUTE = "gsi_key"

Item = dict[str, Any]


def shard_of(key: str) -> int:
    """The key's shard: stable across processes, hosts and releases (not `hash()`)."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % SHARDS


def partition(bucket: str, key: str) -> str:
    """The `gsi_bucket` value of `key`'s LATEST item."""
    return f"{bucket}{SEPARATOR}{shard_of(key)}"


def partitions(bucket: str) -> list[str]:
    """Every `gsi_bucket` value a LATEST of `bucket` may have, sharded first (so the
    merge prefers a rewritten item to its unsharded copy), the unsharded one last."""
    return [f"{bucket}{SEPARATOR}{shard}" for shard in range(SHARDS)] + [bucket]


def index_fields(bucket: str, key: str) -> Item:
    """The index attributes of a LATEST item (wire format)."""
    return {BUCKET_ATTRIBUTE: {"S": partition(bucket, key)}, KEY_ATTRIBUTE: {"S": key}}


def item_key(item: Item) -> str:
    """The `gsi_key` of an index item ("" when missing: the index never returns one)."""
    value = item.get(KEY_ATTRIBUTE)
    text = value.get("S") if isinstance(value, dict) else None
    return text if isinstance(text, str) else ""


def is_unsharded(item: Item, bucket: str) -> bool:
    """Was this LATEST indexed by an older release (`gsi_bucket` = the bucket name)?"""
    value = item.get(BUCKET_ATTRIBUTE)
    return isinstance(value, dict) and value.get("S") == bucket


def key_condition(value: str, prefix: str, after: str) -> dict[str, Any]:
    """Query arguments for one partition: the keys under `prefix`, or, with `after`, the
    keys sorting after it (the next page of a listing; the caller stops past `prefix`)."""
    condition = f"{BUCKET_ATTRIBUTE} = :b"
    values: dict[str, Any] = {":b": {"S": value}}
    if after and after >= prefix:  # the page starts inside or past the prefix
        condition += f" AND {KEY_ATTRIBUTE} > :a"
        values[":a"] = {"S": after}
    elif prefix:
        condition += f" AND begins_with({KEY_ATTRIBUTE}, :p)"
        values[":p"] = {"S": prefix}
    return {"KeyConditionExpression": condition, "ExpressionAttributeValues": values}


def merged(streams: Iterable[Iterator[Item]], prefix: str) -> Iterator[Item]:
    """The items of every partition's stream (each in key order) in key order, each key
    once, stopping each stream at its first key past `prefix`. Lazy: `heapq.merge` holds
    one item per stream and pulls the next only when that one is used.

    Python compares `str` by code point, DynamoDB sorts a string range key by its UTF-8
    bytes: the same order for every string UTF-8 can encode."""
    inside = (
        itertools.takewhile(lambda item: item_key(item).startswith(prefix), s) for s in streams
    )
    last: str | None = None
    for item in heapq.merge(*inside, key=item_key):
        key = item_key(item)
        if key != last:
            last = key
            yield item
