"""One well-formed version record as a dict of its fields (what `records.validated` takes,
what a ledger item or journal line holds once read): the starting point the tests of the
record's parsing mutate (test_records_validated.py, test_ledger_parse_item.py)."""

from __future__ import annotations

from typing import Any

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
