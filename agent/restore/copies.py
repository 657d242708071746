"""Reading a stored copy back off the volume, verified against its record.

`verified_chunks` yields the original bytes of a stored version and raises `CorruptCopy`
at the end when they are missing, undecodable, or do not hash to the recorded SHA-256
and size. Restores, uploads and `verify` all read copies through it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from agent.errors import IntegrityError
from agent.records import VersionRecord
from agent.storage.volume import READ_CHUNK, Volume

THREAD_FROM_BYTES = 4 << 20  # smaller copies are hashed inline: a thread costs more


class _Hasher:
    """SHA-256 of the chunks in order; with `threaded`, each chunk is hashed in a thread of
    its own while the caller writes it (hashlib releases the GIL), one chunk at a time so
    nothing more is held than the chunk the caller already has."""

    def __init__(self, threaded: bool) -> None:
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="sha256") if threaded else None
        self._pending: Future[None] | None = None

    def update(self, data: bytes) -> None:
        if self._pool is None:
            self._digest.update(data)
            return
        self._wait()
        self._pending = self._pool.submit(self._digest.update, data)

    def hexdigest(self) -> str:
        self._wait()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._wait()
            self._pool.shutdown(wait=True)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


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
    digest = _Hasher(record.size is None or record.size > THREAD_FROM_BYTES)
    total = 0
    try:
        # A large copy decompresses ahead in other threads (frames on every core, else one
        # read-ahead thread) and is hashed in one more while the caller writes the chunk.
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
    finally:
        digest.close()  # waits for the chunk being hashed; idempotent
    if digest.hexdigest() != record.sha256:
        raise CorruptCopy(
            record,
            f"stored copy {record.sha256} is corrupt (its bytes hash to {digest.hexdigest()})",
        )
    if record.size is not None and total != record.size:
        raise CorruptCopy(
            record, f"stored copy {record.sha256} holds {total} bytes, expected {record.size}"
        )
