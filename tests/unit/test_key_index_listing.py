"""`key_index.listing` reads the partitions' pages concurrently, one page ahead each, and is
the sequential merge it replaced (`sequential` below: each partition paged lazily inside
`merged`, as `Ledger.keys` did before): the same items in the same order, the same pages
asked for by a whole listing, at most one page more per partition however far a consumer
got, the same error at the same place, and no thread left when it ends, stops or fails.

The partitions here are a fake of DynamoDB's Query of the `by-key` index (`Index`): the key
condition of `key_index.key_condition`, pages of a few items with a `LastEvaluatedKey`, and,
as DynamoDB may, a `LastEvaluatedKey` on a partition's last page followed by an empty page
("If LastEvaluatedKey is not empty, it does not necessarily mean that there is more data in
the result set", https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/
Query.Pagination.html). The Ledger's own Query is tested against moto in
tests/unit/test_ledger_listing.py.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.aws import client_config
from agent.storage import key_index
from agent.storage.key_index import Item, Page, item_key, merged, partitions
from tests.support.aws import make_config

BUCKET = "company-documents"
KEYS = st.text(alphabet=st.sampled_from("ab/-.é✓"), min_size=1, max_size=5)
PREFIXES = st.sampled_from(["", "a", "b/", "é", "a/b", "✓"])


class Throttled(Exception):
    """A Query's error, as the Ledger raises it (classified) from a pool thread."""


@dataclass
class Index:
    """The partitions of a fake `by-key` index and every page asked of it."""

    items: dict[str, list[Item]]  # partition value -> its items in key order
    prefix: str
    after: str
    page_size: int
    empty_last: frozenset[str] = frozenset()  # partitions ending on an empty page
    fail_at: tuple[str, int] | None = None  # (partition, page number) whose Query fails
    asked: list[tuple[str, int]] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def read_page(self, value: str, start: Item | None) -> Page:
        matching = [i for i in self.items.get(value, []) if self._condition(item_key(i))]
        begin = 0 if start is None else 1 + int(start["n"])
        number = 0 if start is None else int(start["page"]) + 1
        with self._lock:
            self.asked.append((value, number))
            self.threads.add(threading.current_thread().name)
        if self.fail_at == (value, number):
            raise Throttled(f"{value} page {number}")
        page = matching[begin : begin + self.page_size]
        end = begin + len(page)
        more = end < len(matching) or (value in self.empty_last and bool(page))
        if not more:
            return page, None
        return page, {"n": end - 1, "page": number, "gsi_key": {"S": item_key(page[-1])}}

    def _condition(self, key: str) -> bool:  # key_index.key_condition, as DynamoDB reads it
        if self.after and self.after >= self.prefix:
            return key > self.after
        return key.startswith(self.prefix)

    def pages(self) -> Counter[tuple[str, int]]:
        with self._lock:
            return Counter(self.asked)


def sequential(index: Index, values: list[str], prefix: str) -> Iterator[Item]:
    """`Ledger.keys`'s merge before the pages were read concurrently: each partition a lazy
    paginator (its next page asked for when the merge has used the last item)."""

    def stream(value: str) -> Iterator[Item]:
        start: Item | None = None
        while True:
            items, start = index.read_page(value, start)
            yield from items
            if start is None:
                return

    return merged([stream(value) for value in values], prefix)


@st.composite
def indexes(draw: st.DrawFn) -> tuple[Index, Index]:
    """Two identical fake indexes (one for each listing): keys in their shards, some also
    (a key in two partitions, while it is migrated) or only in the unsharded partition."""
    keys = draw(st.sets(KEYS, max_size=60))
    unsharded = draw(st.sets(st.sampled_from(sorted(keys)))) if keys else set()
    only_old = draw(st.sets(st.sampled_from(sorted(unsharded)))) if unsharded else set()
    items: dict[str, list[Item]] = {}
    for key in sorted(keys):
        if key not in only_old:
            items.setdefault(key_index.partition(BUCKET, key), []).append(_item(key, "new"))
        if key in unsharded:
            items.setdefault(BUCKET, []).append(_item(key, "old"))
    values = partitions(BUCKET)
    empty_last = frozenset(draw(st.sets(st.sampled_from(values))))
    prefix = draw(PREFIXES)
    after = draw(st.one_of(st.just(""), KEYS))
    size = draw(st.integers(1, 4))
    fail_at = draw(st.none() | st.tuples(st.sampled_from(values), st.integers(0, 3)))

    def index() -> Index:
        return Index(items, prefix, after, size, empty_last, fail_at)

    return index(), index()


def _item(key: str, tag: str) -> Item:
    return {"gsi_key": {"S": key}, "tag": tag}


def _taken(items: Iterator[Item], limit: int | None) -> tuple[list[Item], str | None]:
    """The first `limit` items (all: None) and the error that stopped them, if any."""
    got: list[Item] = []
    try:
        for item in items:
            if limit is not None and len(got) >= limit:
                break
            got.append(item)
    except Throttled as error:
        return got, str(error)
    return got, None


@settings(max_examples=150, deadline=None)
@given(pair=indexes(), limit=st.none() | st.integers(0, 12), threads=st.integers(1, 8))
def test_the_listing_is_the_sequential_merge_and_asks_at_most_one_page_ahead(pair, limit, threads):
    old, new = pair
    values = partitions(BUCKET)
    before = set(threading.enumerate())

    want, want_error = _taken(sequential(old, values, old.prefix), limit)
    listing = key_index.listing(new.read_page, values, new.prefix, item_key, threads)
    got, error = _taken(listing, limit)
    listing.close()

    assert got == want  # same items (the sharded copy of a key in two), same order
    assert error == want_error  # the same Query's error, after the same items
    assert set(threading.enumerate()) == before  # the pool's threads are joined
    asked, needed = new.pages(), old.pages()
    assert all(n == 1 for n in asked.values())  # no page asked twice
    if limit is None and error is None:
        assert asked == needed  # a whole listing: one Query per partition page, as before
    else:
        # everything the sequential merge read, and at most one page more a partition: the
        # page after the last it read, or its first (all are asked for at once; the
        # sequential merge asked for each before its first item, unless a Query failed)
        assert needed <= asked
        ahead = Counter(value for value, _number in asked - needed)
        assert all(n <= 1 for n in ahead.values())
        for value, number in asked - needed:
            assert number == 0 or (value, number - 1) in needed


def _wide_index(keys_per_partition: int, page_size: int) -> Index:
    items: dict[str, list[Item]] = {}
    for n in range(keys_per_partition * key_index.SHARDS * 4):
        key = f"k/{n:05}"
        items.setdefault(key_index.partition(BUCKET, key), []).append(_item(key, "new"))
    return Index(items, "", "", page_size)


def test_every_partitions_first_page_is_asked_for_before_the_first_item_and_one_more_at_most():
    index = _wide_index(20, 3)
    listing = key_index.listing(index.read_page, partitions(BUCKET), "", item_key)
    first = next(listing)
    listing.close()
    assert item_key(first) == "k/00000"
    pages = index.pages()
    assert {value for value, number in pages if number == 0} == set(partitions(BUCKET))
    per_partition = Counter(value for value, _number in pages)
    assert max(per_partition.values()) <= 2


def test_the_pages_are_read_by_a_small_pool_not_the_consumers_thread():
    index = _wide_index(10, 2)
    listing = key_index.listing(index.read_page, partitions(BUCKET), "", item_key, threads=3)
    assert [item_key(i) for i in listing] == sorted(
        item_key(i) for items in index.items.values() for i in items
    )
    assert threading.current_thread().name not in index.threads
    assert 1 <= len(index.threads) <= 3


@pytest.mark.parametrize("how", ["close", "dropped", "islice"])
def test_a_consumer_that_stops_after_a_few_items_leaves_no_thread(how):
    index = _wide_index(20, 2)
    before = set(threading.enumerate())
    listing = key_index.listing(index.read_page, partitions(BUCKET), "", item_key)
    if how == "islice":  # `find --limit`: the listing is dropped with the islice
        taken = [item_key(i) for i in itertools.islice(listing, 5)]
        del listing
    else:
        taken = [item_key(next(listing)) for _ in range(5)]
        assert set(threading.enumerate()) > before  # the pool is working
        if how == "close":
            listing.close()
        else:
            del listing  # CPython closes a generator nobody holds
    assert taken == [f"k/{n:05}" for n in range(5)]
    assert set(threading.enumerate()) == before


def test_a_listing_resumed_after_a_key_reads_no_partition_past_the_prefix():
    """With `after`, a partition's Query runs on past the prefix (`gsi_key > after`); its
    next page is not asked for once a page ends past the prefix (the merge stops there)."""
    items: dict[str, list[Item]] = {}
    for key in sorted(f"{d}/{n:03}" for d in "abc" for n in range(200)):
        items.setdefault(key_index.partition(BUCKET, key), []).append(_item(key, "new"))
    old, new = Index(items, "b/", "b/100", 2), Index(items, "b/", "b/100", 2)
    want = list(sequential(old, partitions(BUCKET), "b/"))
    got = list(key_index.listing(new.read_page, partitions(BUCKET), "b/", item_key))
    assert [item_key(i) for i in got] == [f"b/{n:03}" for n in range(101, 200)]
    assert got == want
    assert new.pages() == old.pages()


def test_a_failing_query_reaches_the_consumer_where_the_merge_needs_its_page():
    index = _wide_index(5, 2)
    failing = key_index.partition(BUCKET, "k/00040")
    index.fail_at = (failing, 1)
    reference = Index(index.items, "", "", 2, fail_at=(failing, 1))
    want, want_error = _taken(sequential(reference, partitions(BUCKET), ""), None)
    before = set(threading.enumerate())

    got, error = _taken(key_index.listing(index.read_page, partitions(BUCKET), "", item_key), None)

    assert want_error == error == f"{failing} page 1"
    assert [item_key(i) for i in got] == [item_key(i) for i in want]
    assert got  # the items before the failed page came, as they did one page at a time
    assert set(threading.enumerate()) == before


@pytest.mark.parametrize("workers", [1, 4, 16])
def test_the_agents_clients_have_a_connection_for_each_listing_query_beside_the_workers(
    tmp_path, workers
):
    """A listing's pool runs THREADS Queries at once on the client the pipeline's workers
    use (retention, pressure and reconcile list keys in the daemon): a request beyond the
    client's connection pool opens a connection and drops it afterwards."""
    config = make_config(tmp_path, consumer={"workers": workers})
    pool = client_config(config).max_pool_connections
    assert pool >= workers * 2 + 4 + key_index.THREADS
