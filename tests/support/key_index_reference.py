"""`Ledger.keys` as it was before the partitions were read concurrently (agent/storage/
ledger.py at 552eca0): each partition of the `by-key` index a lazy boto3 paginator
(`Ledger._query`, its next page asked for when the merge has used the last item), merged in
the consumer's thread. The oracle tests/unit/test_ledger_listing.py compares today's
`Ledger.keys` with; kept as it was, so that a change to the ledger cannot change both."""

from __future__ import annotations

from collections.abc import Iterator

from agent.records import VersionRecord
from agent.storage import key_index
from agent.storage.ledger import KEY_INDEX, Ledger


def keys(ledger: Ledger, bucket: str, prefix: str = "", after: str = "") -> Iterator[VersionRecord]:
    streams = [
        ledger._query(IndexName=KEY_INDEX, **key_index.key_condition(value, prefix, after))
        for value in key_index.partitions(bucket)
    ]
    for item in key_index.merged(streams, prefix):
        latest = ledger._latest_of(item, bucket)
        if latest is not None:
            yield latest
