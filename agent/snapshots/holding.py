"""Which snapshot holds a version: of the volume that holds it, taken after it was stored.

A fleet's snapshots stay per volume (each member snapshots its own), and every ledger
record names the volume its copy was written to. A version still in the ledger has not
been expired, so its copy was never collected: every snapshot of its volume taken after
the copy was written holds it. The newest such snapshot is chosen (retention deletes the
oldest first, and it holds the most besides).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from agent.snapshots.records import Snapshot

COMPLETED = "completed"


def snapshot_holding(
    snapshots: Iterable[Snapshot], volume_id: str, stored_at: datetime
) -> Snapshot | None:
    """The newest completed snapshot of `volume_id` taken after `stored_at`, or None."""
    found = [
        s
        for s in snapshots
        if s.volume_id == volume_id and s.state == COMPLETED and s.taken_at >= stored_at
    ]
    return max(found, key=lambda s: (s.taken_at, s.snapshot_id), default=None)
