"""`stored_versions` (backup-restore verify's records): a key's history streamed twice, not
held, with the same versions and removals as reading it whole.

The reference is the former implementation: the whole history in a list, its removals
found first. A fake source streams each key's records in any order and counts its passes;
the ledger's own stream is checked against moto (functional tests run the CLI).
"""

from __future__ import annotations

import collections
import dataclasses
import tracemalloc
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.history import is_removal
from agent.records import VersionRecord
from agent.restore import verify as verify_module
from agent.restore.source import LedgerSource
from agent.restore.verify import stored_versions
from agent.storage.ledger import Ledger
from tests.support.ledger_table import BUCKET, TABLE, ledger_table

BASE = VersionRecord(
    bucket=BUCKET,
    key="k",
    version_token="t:0",
    order_key="o:0",
    event_name="ObjectCreated:Put",
    event_time="2026-11-01T09:00:00+00:00",
    backup_time="2026-11-01T09:00:00+00:00",
    volume_id="vol-test",
    version_id="v0",
    sha256="ab" * 32,
    size=10,
)


def version(key: str, n: int) -> VersionRecord:
    return dataclasses.replace(
        BASE, key=key, version_token=f"t:{n}", order_key=f"o:{n:08d}", version_id=f"v{n}"
    )


def removal(key: str, n: int, of: int) -> VersionRecord:
    """ObjectRemoved:Delete of version `of`, recorded as record number `n`."""
    return dataclasses.replace(
        version(key, n),
        event_name="ObjectRemoved:Delete",
        version_token=f"rm:t:{n}",
        version_id=f"v{of}",
        deleted=True,
        sha256=None,
        size=None,
    )


def marker(key: str, n: int) -> VersionRecord:
    return dataclasses.replace(
        version(key, n),
        event_name="ObjectRemoved:DeleteMarkerCreated",
        deleted=True,
        delete_marker=True,
        sha256=None,
        size=None,
    )


class StreamedSource:
    """Keys' records, streamed in the order given (not the version order); counts passes."""

    def __init__(self, histories: dict[str, list[VersionRecord]]) -> None:
        self.histories = histories
        self.passes: collections.Counter[str] = collections.Counter()

    def latest(self, bucket: str, prefix: str = "", after: str = "") -> Iterator[VersionRecord]:
        return (records[-1] for key, records in sorted(self.histories.items()) if records)

    def history(self, bucket: str, key: str) -> list[VersionRecord]:
        return sorted(self.histories[key], key=lambda r: r.order_key)

    def records(self, bucket: str, key: str) -> Iterator[VersionRecord]:
        self.passes[key] += 1
        yield from self.histories[key]


def reference(
    source: StreamedSource, buckets: Iterable[str]
) -> tuple[list[VersionRecord], set[str]]:
    """The former `stored_versions`: each key's whole history in a list, removals first."""
    yielded: list[VersionRecord] = []
    removed: set[str] = set()
    for bucket in buckets:
        for latest in source.latest(bucket):
            history = list(source.history(bucket, latest.key))
            gone = {r.version_id for r in history if is_removal(r)}
            for record in history:
                if not record.deleted and record.sha256:
                    if record.version_id in gone:
                        removed.add(record.version_token)
                    yielded.append(record)
    return yielded, removed


def tokens(records: Iterable[VersionRecord]) -> list[tuple[str, str]]:
    return sorted((r.key, r.version_token) for r in records)


@st.composite
def histories(draw: st.DrawFn) -> dict[str, list[VersionRecord]]:
    """Keys whose records mix versions, removals of any of them (before or after the
    version in the stream), delete markers and records without a copy, in any order."""
    found: dict[str, list[VersionRecord]] = {}
    for key in draw(st.lists(st.sampled_from("abcde"), min_size=1, max_size=4, unique=True)):
        count = draw(st.integers(1, 12))
        records: list[VersionRecord] = []
        for n in range(count):
            kind = draw(st.sampled_from(["version", "version", "removal", "marker", "no copy"]))
            if kind == "version":
                records.append(version(key, n))
            elif kind == "removal":
                records.append(removal(key, n, of=draw(st.integers(0, count))))
            elif kind == "marker":
                records.append(marker(key, n))
            else:
                records.append(dataclasses.replace(version(key, n), sha256=None))
        found[key] = draw(st.permutations(records))
    return found


@pytest.mark.parametrize("kept", [0, 3, 1000], ids=["never-kept", "some-kept", "all-kept"])
@given(keys=histories())
@settings(max_examples=60, deadline=None)
def test_the_same_versions_and_removals_as_the_whole_history(
    kept: int, keys: dict[str, list[VersionRecord]]
) -> None:
    source = StreamedSource(keys)
    removed: set[str] = set()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(verify_module, "KEPT_VERSIONS", kept)
        yielded = list(stored_versions(source, [BUCKET], removed=removed))  # type: ignore[arg-type]
    expected, expected_removed = reference(source, [BUCKET])
    assert tokens(yielded) == tokens(expected) and removed == expected_removed
    for key, records in keys.items():
        stored = sum(1 for r in records if not r.deleted and r.sha256)
        assert source.passes[key] == (2 if stored > kept else 1)


def test_a_key_with_many_versions_is_streamed_twice_not_held() -> None:
    """20,000 versions of one key and a removal of the first, recorded last: all versions
    yielded, the first one's removal noted, and no more than KEPT_VERSIONS records held
    (the records are made as the source streams them: what stays alive is what is held)."""
    count = 20_000

    class Made(StreamedSource):
        def records(self, bucket: str, key: str) -> Iterator[VersionRecord]:
            self.passes[key] += 1
            yield from (version("many", n) for n in range(count))
            yield removal("many", count, of=0)

    source = Made({"many": [version("many", count - 1)]})
    removed: set[str] = set()
    seen = 0
    tracemalloc.start()
    try:
        for record in stored_versions(source, [BUCKET], removed=removed):  # type: ignore[arg-type]
            assert record.key == "many"
            seen += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count and removed == {"t:0"} and source.passes["many"] == 2
    held_all = count * _record_bytes()
    assert peak < held_all / 4, (peak, held_all)


def _record_bytes() -> int:
    """The memory 1,000 records take, per record (tracemalloc, as above)."""
    tracemalloc.start()
    try:
        kept = [version("many", n) for n in range(1000)]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return size // 1000


def test_the_ledger_streams_a_keys_records_and_a_long_history_is_queried_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against moto: the ledger's stream holds the records `versions` returns, and a key
    with more stored versions than KEPT_VERSIONS costs two Queries, one otherwise."""
    monkeypatch.setattr(verify_module, "KEPT_VERSIONS", 5)
    with ledger_table() as client:
        ledger = Ledger(client, TABLE)
        for n in range(8):
            ledger.record(version("long", n))
        ledger.record(removal("long", 8, of=2))
        for n in range(3):
            ledger.record(version("short", n))
        queries: collections.Counter[str] = collections.Counter()  # versions Queries by key
        client.meta.events.register(
            "provide-client-params.dynamodb.Query",
            lambda params, **_: queries.update(
                [params["ExpressionAttributeValues"][":pk"]["S"].split("/")[-1]]
                if "begins_with(sk" in params["KeyConditionExpression"]
                else []
            ),
        )
        assert tokens(ledger.stream_versions(BUCKET, "long")) == tokens(
            ledger.versions(BUCKET, "long")
        )
        assert queries == {"long": 2}  # one each: the stream is one Query (one page here)
        queries.clear()
        source = LedgerSource(ledger)
        passes: collections.Counter[str] = collections.Counter()
        streamed = source.records

        def counted(bucket: str, key: str) -> Iterator[VersionRecord]:
            passes[key] += 1
            return streamed(bucket, key)

        monkeypatch.setattr(source, "records", counted)
        removed: set[str] = set()
        yielded = list(stored_versions(source, [BUCKET], removed=removed))
    assert tokens(yielded) == [("long", f"t:{n}") for n in range(8)] + [
        ("short", f"t:{n}") for n in range(3)
    ]
    assert removed == {"t:2"}
    assert passes == {"long": 2, "short": 1}  # 8 stored versions > 5: read again
    assert queries["long"] == 2
