"""Restore items straight off a volume: a copy written with `Volume.write_copy` and the
record pointing at it, placed under a restore directory (no AWS, no journal)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from agent.records import VersionRecord
from agent.restore.paths import place_keys
from agent.restore.plan import Item, Plan
from agent.storage.volume import CompressionSettings, Volume

SETTINGS = CompressionSettings(level=1, threads=1)


def stored_record(volume: Volume, key: str, data: bytes) -> VersionRecord:
    copy = volume.write_copy([data], SETTINGS)
    return VersionRecord(
        bucket="b", key=key, version_token="v:1", order_key="s1", event_name="ObjectCreated:Put",
        event_time="2026-11-01T09:00:00+00:00", backup_time="2026-11-01T09:00:01+00:00",
        volume_id="vol-test", sha256=copy.sha256, size=copy.size,
    )  # fmt: skip


def placed_plan(volume: Volume, keys: Iterable[str], data: bytes) -> Plan:
    """One item per key, all holding `data` (one copy on the volume), placed."""
    first, *rest = list(keys)
    record = stored_record(volume, first, data)
    records = [record, *(dataclasses.replace(record, key=key) for key in rest)]
    placements = place_keys(record.key for record in records)
    return Plan([Item(record, placement=placements[record.key]) for record in records])


def placed_item(volume: Volume, key: str, data: bytes) -> Item:
    [item] = placed_plan(volume, [key], data).items
    return item
