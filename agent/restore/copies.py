"""Reading a stored copy back off the volume, verified against its record.

`verified_chunks` yields the original bytes of a stored version and raises `CorruptCopy`
at the end when they are missing, undecodable, or do not hash to the recorded SHA-256
and size. Restores, uploads and `verify` all read copies through it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Generator

import zstandard

from agent.errors import IntegrityError
from agent.records import VersionRecord
from agent.storage.volume import READ_CHUNK, Volume


def describe(record: VersionRecord) -> str:
    version = record.version_id or record.version_token
    return f"s3://{record.bucket}/{record.key} (version {version})"


class CorruptCopy(IntegrityError):
    """A stored copy is missing or does not hold the recorded bytes."""

    def __init__(self, record: VersionRecord, reason: str) -> None:
        self.record = record
        self.reason = reason
        super().__init__(f"{describe(record)}: {reason}")


def verified_chunks(
    volume: Volume, record: VersionRecord, chunk: int = READ_CHUNK
) -> Generator[bytes, None, None]:
    """The original bytes of a stored version; CorruptCopy at the end if they are wrong.

    Callers commit nothing until the iterator is exhausted without an error.
    """
    if not record.sha256:
        raise CorruptCopy(record, "the record names no stored copy")
    digest = hashlib.sha256()
    total = 0
    try:
        # A large copy decompresses ahead in other threads (frames on every core, else one
        # read-ahead thread): hash and write overlap with it.
        with contextlib.closing(volume.copy_chunks(record.sha256, record.size)) as chunks:
            for data in chunks:
                if record.size is not None and total + len(data) > record.size:
                    # A planted or damaged copy that expands past the record: stop before a
                    # byte beyond the recorded size reaches the target (disk and memory flat).
                    raise CorruptCopy(
                        record,
                        f"stored copy {record.sha256} expands past the recorded"
                        f" {record.size} bytes",
                    )
                digest.update(data)
                total += len(data)
                yield data
    except FileNotFoundError:
        raise CorruptCopy(record, f"stored copy {record.sha256} is missing") from None
    except CorruptCopy:
        raise
    except IntegrityError as exc:  # a symlink or no file where the copy should be
        raise CorruptCopy(record, str(exc)) from None
    except ValueError as exc:  # the record's sha256 is not a digest at all
        raise CorruptCopy(record, f"the record names no valid copy ({exc})") from None
    except zstandard.ZstdError as exc:
        raise CorruptCopy(record, f"stored copy {record.sha256} is corrupt ({exc})") from None
    if digest.hexdigest() != record.sha256:
        raise CorruptCopy(
            record,
            f"stored copy {record.sha256} is corrupt (its bytes hash to {digest.hexdigest()})",
        )
    if record.size is not None and total != record.size:
        raise CorruptCopy(
            record, f"stored copy {record.sha256} holds {total} bytes, expected {record.size}"
        )
