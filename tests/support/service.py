"""Test helper: the one way tests build a `BackupService` on the conftest's bucket and table."""

from __future__ import annotations

from typing import Any

from agent.pipeline.backup import BackupService
from agent.storage.journal import Journal
from agent.storage.ledger import Ledger
from agent.storage.volume import CompressionSettings, Volume
from tests.support.aws import BUCKET, TABLE


def make_service(aws: Any, volume: Volume, **overrides: Any) -> BackupService:
    """A service writing to `volume` and the moto table; keyword arguments replace defaults."""
    options: dict[str, Any] = {
        "s3": aws.s3,
        "volume": volume,
        "journal": Journal(volume.journal_dir),
        "ledger": Ledger(aws.dynamodb, TABLE),
        "volume_id": "vol-test",
        "buckets": frozenset([BUCKET]),
        "compression": CompressionSettings(threads=1, chunk_bytes=64 << 10),
    }
    options.update(overrides)
    return BackupService(**options)
