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
order (`merged`). A key's LATEST is one item, so it is in one partition; while
`unsharded` items are rewritten the index (eventually consistent) may briefly show it in
two, and the merge yields it once.

The partitions are read concurrently (`listing`), one page ahead each: every partition's
first page is asked for at once, and a partition's next page when the merge starts on its
current one, by a pool of THREADS threads. So the 17 first pages cost a few round trips, not
17 one after another, the consumer works on one page while others are read, and memory stays
bounded (at most two pages of 1 MB a partition: the one merged and the one ahead). A
partition whose page ends past the prefix (a listing resumed with `after`) is not read
further, so a whole listing asks for exactly the pages the sequential merge asked for: one
Query per partition page (what DynamoDB bills). A Query's error (after botocore's own
retries of throttling) is raised where the merge needs that page, as it was when pages were
read one after another; and the pool is shut down, its threads joined, whenever the listing
ends: used up, closed half-way (`find --limit`) or failed (a restore forks its worker
processes only from a lone thread, agent/restore/workers.py `usable`)."""

from __future__ import annotations

import heapq
import itertools
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from agent.aws import LISTING_THREADS

SHARDS = 16
SEPARATOR = "#"
BUCKET_ATTRIBUTE = "gsi_bucket"
KEY_ATTRIBUTE = "gsi_key"

# Queries in flight at once: the 17 first pages in 3 round trips instead of 17. The agent's
# clients keep room for them in their connection pool beside the pipeline's workers
# (`agent.aws.client_config`): a request beyond the pool would open a connection and drop it.
THREADS = LISTING_THREADS

Item = dict[str, Any]
# One Query's `Items` and `LastEvaluatedKey` (None: the partition's last page).
Page = tuple[list[Item], Item | None]
T = TypeVar("T")
# Reads one page of a partition: (the partition's `gsi_bucket` value, ExclusiveStartKey or
# None for its first page) -> its items (or what is made of each) and LastEvaluatedKey.
# Called from the pool's threads.
ReadPage = Callable[[str, Item | None], tuple[list[T], Item | None]]


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
    return _merged(streams, prefix, item_key)


def _merged(streams: Iterable[Iterator[T]], prefix: str, key: Callable[[T], str]) -> Iterator[T]:
    """`merged` of streams of anything that carries an item (`key` reads its `gsi_key`)."""
    inside = (itertools.takewhile(lambda e: key(e).startswith(prefix), s) for s in streams)
    last: str | None = None
    for element in heapq.merge(*inside, key=key):
        current = key(element)
        if current != last:
            last = current
            yield element


def listing(
    read_page: ReadPage[T],
    values: Sequence[str],
    prefix: str,
    key: Callable[[T], str],
    threads: int = THREADS,
) -> Generator[T, None, None]:
    """`merged` over the partitions `values`, their pages read by `read_page` in a pool of
    `threads` threads, one page ahead per partition (the module's docstring). A page holds
    items or anything `read_page` makes of them in the pool's thread; the ledger leaves
    them as they are and parses each one the merge yields in the consumer's thread (Python
    under the GIL: in the pool it only took turns with the consumer). `key` reads the
    `gsi_key`. The pool is made at the first item asked for and joined when this generator
    ends, is closed, or raises."""
    pool = ThreadPoolExecutor(max(1, min(threads, len(values))), thread_name_prefix="key-index")
    try:
        firsts = [pool.submit(read_page, value, None) for value in values]
        streams = [
            _ahead(pool, read_page, value, first, prefix, key)
            for value, first in zip(values, firsts, strict=True)
        ]
        yield from _merged(streams, prefix, key)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _ahead(
    pool: ThreadPoolExecutor,
    read_page: ReadPage[T],
    value: str,
    pending: Future[tuple[list[T], Item | None]] | None,
    prefix: str,
    key: Callable[[T], str],
) -> Iterator[T]:
    """One partition's items: waits for its page in flight (raising the Query's error) and,
    before yielding the page's first item, asks for the next page unless this one was the
    last or ends past `prefix` (where `merged` stops the partition)."""
    while pending is not None:
        elements, start = pending.result()
        past = bool(elements) and not key(elements[-1]).startswith(prefix)
        pending = pool.submit(read_page, value, start) if start is not None and not past else None
        yield from elements
