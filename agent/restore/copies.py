"""Reading a stored copy back off the volume, verified against its record.

`verified_chunks` yields the original bytes of a stored version and raises `CorruptCopy`
at the end when they are missing, undecodable, or do not hash to the recorded SHA-256
and size. Restores, uploads and `verify` all read copies through it.

A small copy (a recorded size up to `WHOLE_COPY_BYTES`) is first read whole and decompressed
in one call (`_whole`): one open below a cached directory descriptor, one read, one
decompression into a buffer of the recorded size, one hash. Only a copy that is exactly
right comes out of it; anything else (missing, undecodable, a byte too many or too few, a
second frame, another hash) is read again the usual way, which raises what it always did.
For 4 KiB files the usual way's opens, path objects, stream reader and generators were most
of a restore's CPU (docs/benchmarks.md, issue 19).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import threading
import weakref
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

import zstandard

from agent.errors import IntegrityError
from agent.records import VersionRecord
from agent.storage.volume import MAX_WINDOW_BYTES, READ_CHUNK, Volume

THREAD_FROM_BYTES = 4 << 20  # smaller copies are hashed inline: a thread costs more
WHOLE_COPY_BYTES = 1 << 20  # copies of at most this size are read whole first (`_whole`)
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _CopyDirectories:
    """Descriptors of a volume's `objects/xx` directories, opened once each, never through a
    symlink (as `Volume._copy_descriptor` does), closed with the volume object."""

    def __init__(self, volume: Volume) -> None:
        self._root = volume.root
        self._objects = volume.objects_dir.name
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(volume, _close_all, self._fds)

    def get(self, prefix: str) -> int:
        with self._lock:
            fd = self._fds.get(prefix)
            if fd is None:
                root = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    objects = os.open(self._objects, _NOFOLLOW | os.O_DIRECTORY, dir_fd=root)
                finally:
                    os.close(root)
                try:
                    fd = os.open(prefix, _NOFOLLOW | os.O_DIRECTORY, dir_fd=objects)
                finally:
                    os.close(objects)
                self._fds[prefix] = fd
            return fd


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


_directories: weakref.WeakKeyDictionary[Volume, _CopyDirectories] = weakref.WeakKeyDictionary()
_directories_lock = threading.Lock()


def _copy_directory(volume: Volume, prefix: str) -> int:
    with _directories_lock:
        found = _directories.get(volume)
        if found is None:
            found = _directories[volume] = _CopyDirectories(volume)
    return found.get(prefix)


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor for whole small copies, made once: making one per copy
    (its context and window limit) was 6% of a restore of 10,000 small files (perf, issue
    19). A decompressor is used by one thread at a time, and each `decompress` starts from a
    reset context, so a copy that failed leaves nothing behind for the next."""
    found: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if found is None:
        found = _local.decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
    return found


def _whole(volume: Volume, record: VersionRecord) -> bytes | None:
    """The original bytes of a small copy, read and decompressed in one piece, if they are
    exactly the recorded ones; None for anything else (the caller reads it the usual way)."""
    sha256, size = record.sha256 or "", record.size or 0
    if not 0 < size <= WHOLE_COPY_BYTES or not _DIGEST.fullmatch(sha256):
        return None
    try:
        directory = _copy_directory(volume, sha256[:2])
        flags = _NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        fd = os.open(f"{sha256}.zst", flags, dir_fd=directory)
    except OSError:  # missing, a symlink, unreadable: the usual way says which
        return None
    try:
        found = os.fstat(fd)
        # a copy is never much larger than its bytes (zstd's bound: +1/256, + a header)
        if not stat.S_ISREG(found.st_mode) or found.st_size > size + (size >> 7) + 4096:
            return None
        stored = os.read(fd, found.st_size + 1)
    finally:
        os.close(fd)
    try:
        data = _decompressor().decompress(stored, max_output_size=size, allow_extra_data=False)
    except zstandard.ZstdError:
        return None
    if len(data) != size or hashlib.sha256(data).hexdigest() != sha256:
        return None
    return data


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
    if record.size is None:
        # Every copy the agent makes is recorded with its size; without one nothing bounds
        # what a planted copy expands to (written out whole, or held whole by a single
        # PutObject: the restore review, 2026-12-02)
        raise CorruptCopy(record, "the record gives no size, so its copy cannot be checked")
    size = record.size
    whole = _whole(volume, record)
    if whole is not None:
        yield whole
        return
    digest = _Hasher(size > THREAD_FROM_BYTES)
    total = 0
    try:
        # A large copy decompresses ahead in other threads (frames on every core, else one
        # read-ahead thread) and is hashed in one more while the caller writes the chunk.
        with contextlib.closing(volume.copy_chunks(record.sha256, size)) as chunks:
            for data in chunks:
                if total + len(data) > size:
                    # A planted or damaged copy that expands past the record: stop before a
                    # byte beyond the recorded size reaches the target (disk and memory flat).
                    raise CorruptCopy(
                        record,
                        f"stored copy {record.sha256} expands past the recorded {size} bytes",
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
    if total != size:
        raise CorruptCopy(
            record, f"stored copy {record.sha256} holds {total} bytes, expected {size}"
        )
