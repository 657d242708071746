"""Which volume holds a recorded version: the one question a fleet asks of every record.

Every ledger record names the volume its copy was written to (`volume_id`, the id in the
volume's marker). Restore (which versions this member can bring back), retention and
verify (which records this member acts on) all ask it here, so that a record held by more
than one volume (replicas) is taught to one function.
"""

from __future__ import annotations

from agent.records import VersionRecord


def held_by(record: VersionRecord, volume_id: str) -> bool:
    """Is `record`'s copy (or tombstone) recorded on the volume `volume_id`? With replicas a
    record names one holder per replica group (`VersionRecord.holder_volumes`)."""
    return bool(volume_id) and volume_id in record.holder_volumes()
