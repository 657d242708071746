"""Version records the tests start from.

`WELL_FORMED`: one well-formed version record as a dict of its fields (what
`records.validated` takes, what a ledger item or journal line holds once read), the
starting point the tests of the record's parsing mutate (test_records_validated.py,
test_ledger_parse_item.py). `numbered_record`: the n-th version of a key, for the key
index's tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from agent import order
from agent.records import VersionRecord

WELL_FORMED: dict[str, Any] = {
    "bucket": "bench-small",
    "key": "small/00002.json",
    "version_token": "t:20261101T090000.002000Z:8ccdab648cef6446af3f7398d46f8925",
    "order_key": "2:20261101T090000:e002000",
    "event_name": "ObjectCreated:Put",
    "event_time": "2026-11-01T09:00:00.002000+00:00",
    "backup_time": "2026-11-01T09:00:00.002000+00:00",
    "volume_id": "vol-bench-restore-small",
    "deleted": False,
    "delete_marker": False,
    "etag": "8ccdab648cef6446af3f7398d46f8925",
    "sha256": "ff4cb65a4f7190c9f9c0893889ed93c5f0f1c78f3d5cc55bb9199687e309745c",
    "size": 4096,
    "stored_size": 1275,
}


def numbered_record(bucket: str, key: str, n: int) -> VersionRecord:
    """The n-th version of `key`, `n` seconds after 2026-11-01 09:00 UTC, with a sequencer,
    SHA-256 and version id made from `n` (the key index's tests: test_sharded_index.py,
    test_ledger_listing.py)."""
    at = datetime(2026, 11, 1, 9, 0, tzinfo=UTC) + timedelta(seconds=n)
    sequencer = f"{n:016X}"
    return VersionRecord(
        bucket=bucket,
        key=key,
        version_token=f"v:v{n}",
        order_key=order.event_key(at, sequencer),
        event_name="ObjectCreated:Put",
        event_time=at.isoformat(),
        backup_time=at.isoformat(),
        volume_id="vol-test",
        version_id=f"v{n}",
        sequencer=sequencer,
        sha256=f"{n:064x}",
        size=10,
        stored_size=10,
    )
