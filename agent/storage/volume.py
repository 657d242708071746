"""The backup volume: content-addressed, zstd-compressed, checksummed copies.

Layout under the backup root::

    .backup-agent-volume      marker (JSON: volume id, format); no marker, no writes
    objects/ab/<sha256>.zst   one copy per distinct content: zstd frames of at most
                              FRAME_BYTES each (one frame when the size is not known or
                              small), content size and checksum in every frame
    tmp/                      partial writes (<uuid>.part): removed at start-up, nothing else
    journal/                  the volume's own record of every version (see journal.py)
    .backup-agent-running     present while the consumer runs; left by a kill
                              (agent/pipeline/last_run.py)

A copy is written once, in one streaming pass: chunks feed SHA-256 (and MD5 when the
caller wants to check a single-part eTag) and a zstd stream into a temp file on the
same filesystem; then fsync, rename, fsync of the directory (or, for the committer, the
directory noted for its next `sync_directories`). For a large object the
chunks are read and hashed in a thread of their own, a few chunks ahead of the zstd
stream (`_Digests`); a small one of a known size is read whole and compressed in one
call (`_compress_small_to`). No S3 key ever becomes a path: copies are named by the SHA-256 of
their content.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import mmap
import os
import re
import shutil
import stat
import threading
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

import structlog
import zstandard

from agent.errors import DiskFull, IntegrityError, VolumeNotReady
from agent.storage import frames, readahead
from agent.storage.frame_budget import FrameBudget

log = structlog.get_logger("agent.volume")

MARKER_NAME = ".backup-agent-volume"
TEMP_SUFFIX = ".part"
TEMP_NAME = re.compile(r"[0-9a-f]{32}\.part")  # uuid4().hex + TEMP_SUFFIX: write_copy's temp files
MOUNTINFO = Path("/proc/self/mountinfo")
FORMAT_VERSION = 1
READ_CHUNK = 1 << 20
WRITEBACK_BYTES = 8 << 20
# A copy of a known size above this is written as independent frames of this many bytes
# of input: a restore decompresses them on every core (frames.py). The ratio cost on the
# bench's log data: none measurable (0.18590 split into 16 MiB frames, 0.18602 whole). 16 MiB
# keeps two 8 MiB zstd jobs per frame at level 3, so `threads` still compress in parallel.
FRAME_BYTES = 16 << 20
RAMP_FRAMES = 4  # a split copy's first frames: FRAME_BYTES / 16, / 8, / 4, / 2 (_next_size)
TAIL_FRAMES = 4  # and its last 16-32 MiB, in quarters of FRAME_BYTES
# Frames decompressing at once for one copy; with the one the caller holds, a parallel read
# keeps (PARALLEL_FRAMES + 1) * FRAME_BYTES in memory, whatever the copy's size.
PARALLEL_FRAMES = 2
# A copy of a known size up to this is read whole and compressed in one call
# (`_compress_small_to`): the per-object machinery of the streaming path costs more than
# the bytes there.
SMALL_COPY_BYTES = 1 << 20
_parallel_copy = threading.BoundedSemaphore(1)  # one copy at a time reads in parallel
# Frames held at once by all the copies being written in this process (frame_budget.py): as
# many as one copy alone holds with the default `compression_threads` (one per CPU, plus the
# frame being filled), so one large object is as fast as without the budget and several
# share it.
FRAME_BUDGET = FrameBudget((os.cpu_count() or 1) + 1)


# zstd's own default limit for decompression (ZSTD_WINDOWLOG_LIMIT_DEFAULT = 27): the largest
# window a streaming compressor uses at levels 1-22.
MAX_WINDOW_BYTES = 1 << 27


@dataclass(frozen=True, slots=True)
class CompressionSettings:
    level: int = 3
    threads: int = 0  # 0: one zstd worker per CPU
    chunk_bytes: int = 1 << 20

    @property
    def zstd_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)


@dataclass(frozen=True, slots=True)
class VolumeMarker:
    volume_id: str
    created_at: str
    format: int = FORMAT_VERSION


@dataclass(frozen=True, slots=True)
class StoredCopy:
    """A durable copy on the volume."""

    sha256: str
    size: int
    stored_size: int
    path: Path
    deduplicated: bool


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the bytes must be; checked before the copy is moved into place."""

    size: int | None = None
    md5_hex: str | None = None


class Volume:
    """The backup root. Every write goes through here; nothing else builds paths."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self.objects_dir = self.root / "objects"
        self.tmp_dir = self.root / "tmp"
        self.journal_dir = self.root / "journal"
        self.marker_path = self.root / MARKER_NAME
        self.temp_files_removed = 0  # by the last open()
        # Directories a rename changed whose fsync was left to the committer
        # (`write_copy(sync_directory=False)`, `sync_directories`).
        self._unsynced: set[Path] = set()
        self._unsynced_lock = threading.Lock()
        self._syncing = threading.Lock()  # one sync_directories at a time: see there

    # -- start and stop --------------------------------------------------------------

    def initialise(self, volume_id: str | None = None, *, force: bool = False) -> VolumeMarker:
        """Write the marker (idempotent: an existing marker is kept and returned).

        Only into an empty directory or a mount point (the dedicated volume), unless
        `force`: a directory that already holds files is somebody's, not a backup volume.
        """
        if not self.root.is_dir():
            raise VolumeNotReady(f"{self.root} is not a directory")
        with contextlib.suppress(VolumeNotReady):
            return self.read_marker()
        problem = self.not_fresh()
        if problem and not force:
            raise VolumeNotReady(
                f"{problem}: mount the backup volume there, or empty it"
                " (init-volume --force marks it anyway)"
            )
        marker = VolumeMarker(
            volume_id=volume_id or "vol-" + uuid.uuid4().hex[:17],
            created_at=datetime.now(UTC).isoformat(),
        )
        self._make_dirs()
        atomic_write_bytes(
            self.marker_path, json.dumps(dataclasses.asdict(marker), indent=2).encode()
        )
        return marker

    def not_fresh(self) -> str | None:
        """Why the root is not a fresh place for a volume, or None (empty, or a mount point)."""
        if is_mount_point(self.root):
            return None
        entries = sorted(entry.name for entry in os.scandir(self.root))
        if not entries:
            return None
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        return f"{self.root} is not empty and not a mount point (it holds {shown})"

    def read_marker(self) -> VolumeMarker:
        """Return the marker or raise VolumeNotReady saying what is wrong."""
        if not self.root.is_dir():
            raise VolumeNotReady(f"backup root {self.root} does not exist or is not a directory")
        try:
            data = json.loads(self.marker_path.read_bytes())
            return VolumeMarker(**data)
        except FileNotFoundError:
            raise VolumeNotReady(
                f"backup root {self.root} has no {MARKER_NAME} marker: the volume is not mounted"
                " or not initialised (run: backup-agent init-volume)"
            ) from None
        except (OSError, ValueError, TypeError) as exc:
            raise VolumeNotReady(f"volume marker {self.marker_path} is unreadable: {exc}") from None

    def open(self) -> VolumeMarker:
        """Check the marker, create missing directories, remove crash leftovers."""
        marker = self.read_marker()
        self._make_dirs()
        self.temp_files_removed = self.remove_temp_files()
        return marker

    def remove_temp_files(self) -> int:
        """Remove the copies a crash left half-written: only names `write_copy` makes.

        Anything else in tmp/ (an operator's file, a directory, a name not ours) is left.
        """
        removed = 0
        for entry in os.scandir(self.tmp_dir):
            if not TEMP_NAME.fullmatch(entry.name) or entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)  # a symlink is unlinked, never followed
                removed += 1
        return removed

    def _make_dirs(self) -> None:
        for directory in (self.objects_dir, self.tmp_dir, self.journal_dir):
            directory.mkdir(parents=True, exist_ok=True)

    # -- copies ----------------------------------------------------------------------

    def copy_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.objects_dir / sha256[:2] / f"{sha256}.zst"

    def has_copy(self, sha256: str) -> bool:
        return self.copy_path(sha256).is_file()

    def ensure_ready(self) -> None:
        """Cheap check before each write: an unmounted volume loses its marker."""
        if not self.marker_path.is_file():
            self.read_marker()  # raises with the precise reason

    def probe_write(self) -> None:
        """Write, fsync and remove a small file in tmp/: OSError when the volume cannot be
        written (read-only, an I/O error, no inode left). Named as `write_copy`'s temp files
        are, so one a crash leaves between the write and the removal goes at start-up."""
        path = self.tmp_dir / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        try:
            try:
                os.write(fd, b"backup-agent write probe\n")
                os.fsync(fd)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def ensure_room(self, incoming_bytes: int) -> None:
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.min_free_bytes:
            raise DiskFull(
                f"backup volume {self.root}: {free} bytes free, need {incoming_bytes}"
                f" plus the {self.min_free_bytes}-byte reserve"
            )

    def write_copy(
        self,
        chunks: Iterable[bytes],
        compression: CompressionSettings,
        expect: Expectation = Expectation(),
        before_commit: Callable[[], object] | None = None,
        *,
        sync_directory: bool = True,
    ) -> StoredCopy:
        """Stream `chunks` into a durable, content-addressed copy.

        `before_commit` runs after the temp file is durable and just before the rename
        (the write barrier is entered there, so a snapshot never waits for a download).

        `sync_directory=False`: the rename's directory is not fsynced here but noted for
        `sync_directories`, which the caller must run before anything names the copy
        (the committer does, before its journal append: docs/reliability.md). The copy's
        own bytes are fsynced before the rename either way.
        """
        self.ensure_ready()
        temp_path = self.tmp_dir / f"{uuid.uuid4().hex}{TEMP_SUFFIX}"
        try:
            digest, size, stored_size = _compress_to(temp_path, chunks, compression, expect)
            if before_commit is not None:
                before_commit()
            return self._commit(temp_path, digest, size, stored_size, sync_directory)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"backup volume {self.root} is full: {exc.strerror}") from exc
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp_path.unlink()

    def _commit(
        self, temp_path: Path, sha256: str, size: int, stored_size: int, sync_directory: bool
    ) -> StoredCopy:
        final = self.copy_path(sha256)
        if final.exists():
            try:
                os.utime(final)  # fresh mtime: garbage collection's grace period starts again
                return StoredCopy(sha256, size, final.stat().st_size, final, deduplicated=True)
            except FileNotFoundError:
                pass  # garbage collection took it just now: store these bytes afresh
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            fsync_directory(self.objects_dir)
        if sync_directory:
            os.rename(temp_path, final)
            fsync_directory(final.parent)
        else:
            # Noted and renamed under the lock `sync_directories` takes the set with, so no
            # sync falls between the two: one that took the set before holds no note of
            # this rename and the next finds it; one that takes it after fsyncs the
            # directory after the rename. Whoever finds the copy in place (a dedup, in any
            # thread) finds it noted, or in a sync under way, which the next call waits for.
            with self._unsynced_lock:
                self._unsynced.add(final.parent)
                os.rename(temp_path, final)
        return StoredCopy(sha256, size, stored_size, final, deduplicated=False)

    def sync_directories(self) -> int:
        """fsync every directory a rename changed since the last call, for renames made with
        `sync_directory=False` (returns how many). On a failure the directories not known
        synced stay noted (the next call tries them again) and the error is raised: nothing
        that names their copies may be written.

        One call at a time: a caller that finds the set empty because another call took it
        must still wait for that call's fsyncs (or for the directories it puts back)."""
        with self._syncing:
            with self._unsynced_lock:
                if not self._unsynced:
                    return 0
                directories, self._unsynced = self._unsynced, set()
            done: set[Path] = set()
            try:
                for directory in sorted(directories):
                    fsync_directory(directory)
                    done.add(directory)
            except BaseException:
                with self._unsynced_lock:
                    self._unsynced |= directories - done
                raise
            return len(done)

    # -- reading ---------------------------------------------------------------------

    @contextlib.contextmanager
    def open_copy(self, sha256: str) -> Iterator[IO[bytes]]:
        """A reader of the original bytes of a copy (decompressing as it goes).

        The copy is untrusted input: its frame may ask for at most `MAX_WINDOW_BYTES` of
        window (what the compressor can produce at any level), so a planted frame cannot make
        the decompressor allocate more. Callers bound the output by the record's size.
        """
        with os.fdopen(self._copy_descriptor(sha256), "rb") as raw:
            decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
            # every frame of the copy (write_copy splits a large one), not just the first
            reader = decompressor.stream_reader(raw, read_size=READ_CHUNK, read_across_frames=True)
            with reader:
                yield reader

    def copy_chunks(self, sha256: str, limit: int | None) -> Generator[bytes, None, None]:
        """The original bytes of a copy, as fast as this machine allows: a copy split into
        frames decompresses `PARALLEL_FRAMES` frames at once (frames.py; one copy at a time
        in this process, so memory stays bounded however many files a restore runs), any
        other reads serially with read-ahead. `limit` is the size the caller expects: the
        frames' declared sizes must fit in it. Raises what `open_copy` and zstandard raise."""
        with os.fdopen(self._copy_descriptor(sha256), "rb") as raw:
            parts = None
            if (limit is None or limit > FRAME_BYTES) and _parallel_copy.acquire(blocking=False):
                try:
                    parts = frames.decompress_copy(
                        raw.fileno(),
                        limit=limit,
                        workers=PARALLEL_FRAMES,
                        max_window=MAX_WINDOW_BYTES,
                    )
                    if parts is not None:
                        yield from parts
                finally:
                    _parallel_copy.release()
            if parts is None:
                decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW_BYTES)
                reader = decompressor.stream_reader(
                    raw, read_size=READ_CHUNK, read_across_frames=True, closefd=False
                )
                with reader:
                    yield from readahead.chunks(lambda: reader.read(READ_CHUNK), limit)

    def _copy_descriptor(self, sha256: str) -> int:
        """The copy opened below the root by directory descriptors, never through a symlink:
        a volume (or a mounted snapshot) with a symlink planted among its copies cannot make a
        restore or verify read some other file. A copy that is not a regular file is
        IntegrityError; a missing one FileNotFoundError."""
        name = self.copy_path(sha256).name  # validates the digest
        nofollow = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        opened: list[int] = []
        try:
            opened.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            for part in (self.objects_dir.name, sha256[:2]):
                opened.append(os.open(part, nofollow | os.O_DIRECTORY, dir_fd=opened[-1]))
            fd = os.open(name, nofollow | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=opened[-1])
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise IntegrityError(
                    f"copy {sha256} is reached through a symlink or is not a file (not followed)"
                ) from None
            raise
        finally:
            for directory in opened:
                os.close(directory)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise IntegrityError(f"copy {sha256} is not a regular file")
        os.set_blocking(fd, True)
        return fd

    def verify_copy(
        self, sha256: str, size: int | None = None, *, missing_ok: bool = False
    ) -> bool:
        """Decompress a copy and check its SHA-256 (and size); raise IntegrityError. True when
        verified; with `missing_ok`, False when there is no copy (garbage collection removed
        it: scrub's case) rather than IntegrityError."""
        digest = hashlib.sha256()
        total = 0
        try:
            with self.open_copy(sha256) as reader:
                for chunk in readahead.chunks(lambda: reader.read(READ_CHUNK), size):
                    total += len(chunk)
                    if size is not None and total > size:  # a bomb: stop, do not read it all
                        raise IntegrityError(f"copy {sha256} expands past {size} bytes")
                    digest.update(chunk)
        except FileNotFoundError:
            if missing_ok:
                return False
            raise IntegrityError(f"copy {sha256} is missing") from None
        except zstandard.ZstdError as exc:
            raise IntegrityError(f"copy {sha256} is corrupt: {exc}") from None
        if digest.hexdigest() != sha256:
            raise IntegrityError(f"copy {sha256} has SHA-256 {digest.hexdigest()}")
        if size is not None and total != size:
            raise IntegrityError(f"copy {sha256} holds {total} bytes, expected {size}")
        return True

    def usage(self) -> Any:
        return shutil.disk_usage(self.root)


def _compress_to(
    path: Path, chunks: Iterable[bytes], settings: CompressionSettings, expect: Expectation
) -> tuple[str, int, int]:
    digests = _Digests(chunks, expect)
    if expect.size is not None and expect.size <= min(SMALL_COPY_BYTES, FRAME_BYTES):
        return _compress_small_to(path, digests, settings, expect)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    with os.fdopen(fd, "wb") as sink:
        writer = cast(IO[bytes], WritebackAsYouGo(sink))
        sized: _OneFrame | _ParallelFrames
        if expect.size is not None and expect.size > FRAME_BYTES:
            sized = _ParallelFrames(settings, writer, expect.size)
        else:
            sized = _OneFrame(settings, writer, expect.size)
        source = cast(Generator[bytes], readahead.chunks(digests.read, expect.size))
        # the reader thread and the frame workers are stopped and joined on any exit (`sized`
        # told whether its own error is unwinding: frame_budget.FrameBudget.give_back)
        with contextlib.closing(source), sized:
            for chunk in source:
                sized.write(chunk)
            size = digests.size
            if expect.size is not None and size != expect.size:
                raise IntegrityError(f"read {size} bytes, expected {expect.size}")
            sized.end()  # ends the last frame, content checksum included
        md5 = digests.md5
        if md5 is not None and md5.hexdigest() != expect.md5_hex:
            raise IntegrityError(f"MD5 {md5.hexdigest()} does not match eTag {expect.md5_hex}")
        sink.flush()
        os.fsync(sink.fileno())
        stored_size = sink.tell()
    return digests.sha.hexdigest(), size, stored_size


def _compress_small_to(
    path: Path, digests: _Digests, settings: CompressionSettings, expect: Expectation
) -> tuple[str, int, int]:
    """A copy of a known size of at most `SMALL_COPY_BYTES`: read whole (hashed on the way),
    one compress call, one write, one fsync. The same copy as the streaming path (one frame,
    its content size and checksum in it) without its machinery per object: no file object,
    no read-ahead generator, no stream writer, no zstd worker threads (a frame this small is
    one zstd job anyway), a compressor kept per thread (docs/benchmarks.md, issue 19)."""
    parts = []
    while chunk := digests.read():
        parts.append(chunk)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    size = digests.size
    if size != expect.size:
        raise IntegrityError(f"read {size} bytes, expected {expect.size}")
    md5 = digests.md5
    if md5 is not None and md5.hexdigest() != expect.md5_hex:
        raise IntegrityError(f"MD5 {md5.hexdigest()} does not match eTag {expect.md5_hex}")
    compressed = _small_compressor(settings.level).compress(data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(compressed)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return digests.sha.hexdigest(), size, len(compressed)


_compressors = threading.local()


def _small_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's one-shot compressor at `level` (a ZstdCompressor is not thread-safe;
    `compress` starts a new frame every call)."""
    kept: dict[int, zstandard.ZstdCompressor] | None = getattr(_compressors, "by_level", None)
    if kept is None:
        kept = _compressors.by_level = {}
    compressor = kept.get(level)
    if compressor is None:
        compressor = kept[level] = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return compressor


class _Digests:
    """Reads the chunks, checks their length and takes SHA-256 (and MD5) of them on the way.

    A copy of a known size up to `SMALL_COPY_BYTES` calls `read` directly, in the caller's
    thread, until it returns b"" (`_compress_small_to`: no `readahead.chunks`, no thread).
    Every other copy runs `read` through `readahead.chunks` (`_compress_to`): for an object
    above `readahead.THREAD_FROM_BYTES` (or of unknown size) in a thread of its own, a
    couple of chunks ahead of the zstd stream, inline below that (a thread costs more than
    it overlaps there). The download's socket reads and SHA-256 (both release the GIL) then
    overlap with zstd's copy of its input and with the waits for its workers, instead of
    adding to them in one thread: the thread feeding zstd carries about a third of the CPU
    it did (0.5 instead of 1.5 CPU s per GiB here), which is what would bound a large backup
    on a machine with more CPUs than one thread can feed zstd workers for (not measured:
    docs/benchmarks.md).

    Sizes are checked here, before zstd sees the bytes: it enforces the pledged size itself
    and would otherwise replace the IntegrityError with its own "Src size is incorrect".
    The attributes are final once `read` has returned b"" (the reader thread has ended).
    """

    def __init__(self, chunks: Iterable[bytes], expect: Expectation) -> None:
        self._chunks = iter(chunks)
        self._limit = expect.size
        self.sha = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if expect.md5_hex else None
        self.size = 0

    def read(self) -> bytes:
        """The next non-empty chunk, hashed and counted; b"" at the end."""
        for chunk in self._chunks:
            if not chunk:
                continue
            if self._limit is not None and self.size + len(chunk) > self._limit:
                raise IntegrityError(f"object is longer than the expected {self._limit} bytes")
            self.sha.update(chunk)
            if self.md5 is not None:
                self.md5.update(chunk)
            self.size += len(chunk)
            return chunk
        return b""


class _OneFrame:
    """A copy of unknown size or of at most `FRAME_BYTES`: one zstd frame (its size pledged
    when known), compressed by zstd's own worker threads as it streams."""

    def __init__(self, settings: CompressionSettings, sink: IO[bytes], total: int | None) -> None:
        compressor = zstandard.ZstdCompressor(
            level=settings.level, write_checksum=True, threads=settings.zstd_threads
        )
        size = total if total is not None else -1
        self.writer = compressor.stream_writer(sink, size=size, closefd=False)

    def write(self, chunk: bytes) -> None:
        self.writer.write(chunk)

    def end(self) -> None:
        self.writer.flush(zstandard.FLUSH_FRAME)

    def __enter__(self) -> _OneFrame:
        return self

    def __exit__(self, *_: object) -> None:
        """Nothing to stop: zstd's workers end with the frame."""


class _ParallelFrames:
    """A copy of a known size above `FRAME_BYTES`: one frame per `FRAME_BYTES` of input, each
    with its size (frames.py needs it in the header) and its own content checksum, each
    compressed whole by one single-threaded call, `workers` frames at once, written in order.

    Why not zstd's own threads on one stream, frame after frame: ending a frame waits for all
    of its jobs, so every 16 MiB zstd's workers drained (the second job's tail ran on one
    worker while the other waited for the next frame's first job to fill). Frames are
    independent, so here the next frame compresses while the previous one finishes and no
    worker waits for a frame boundary (docs/benchmarks.md, "Large backup: frames compressed
    side by side").
    libzstd releases the GIL while it compresses.

    Memory: every frame held (being filled, compressing, waiting to be written, or its buffer
    kept for reuse) is a `FRAME_BYTES` buffer taken from the process's `FrameBudget`
    (frame_budget.py), plus its compressed output until it is written: at most `workers`
    compressing plus the one being filled for this copy, and at most the budget's frames for
    all copies together; and the output of the one frame being written (by a thread of its
    own, in order, so that a write that blocks does not stop the reading). The budget never
    makes a copy wait. With the budget spent, a copy holding frames reuses its own buffers
    (waits for its oldest frame to be written); a copy holding none compresses its next
    frame streaming, in the caller's thread, as the chunks arrive (`_streamed_write`): the
    same boundaries, header (content size) and checksum, so frames.py reads it like the
    others, with no input buffer, only a single-threaded zstd context (~3.5 MiB at level
    3); at the next boundary it asks the budget again. A failure in a worker (or in the
    writer) is raised in the caller when its frame's turn to be written comes (or at
    `end`); `close` cancels what has not started, waits for what has, so nothing writes
    after (a write that failed while another error unwinds is logged), and gives every
    frame back.
    """

    def __init__(
        self,
        settings: CompressionSettings,
        sink: IO[bytes],
        total: int,
        budget: FrameBudget | None = None,
    ) -> None:
        self.level = settings.level
        self.sink = sink
        self.left = total  # bytes not yet given to a frame
        self.workers = max(1, settings.zstd_threads)
        self.budget = budget if budget is not None else FRAME_BUDGET
        self.held = 0  # frames taken from the budget: buffers filling, compressing or spare
        self.pool = ThreadPoolExecutor(self.workers, thread_name_prefix="zstd-frame")
        # Compressed frames go to the disk from a thread of their own, one at a time, in order:
        # a write that blocks (dirty pages throttled, the writeback hint waiting for the
        # device's queue: 40-50 ms here, more on a slow EBS volume) no longer stops the reading
        # and with it the workers, who ran out of frames and left CPUs idle.
        self.writer = ThreadPoolExecutor(1, thread_name_prefix="zstd-frame-write")
        self.writing: Future[int] | None = None  # the frame being written
        # frames compressing or compressed, each with the list its buffer comes back in
        self.pending: deque[tuple[Future[bytes], list[mmap.mmap]]] = deque()
        self.spare: deque[mmap.mmap] = deque()  # buffers of written frames, for reuse
        self.buffer: mmap.mmap | None = None  # the frame being filled
        self.stream: zstandard.ZstdCompressionWriter | None = None  # the frame streaming
        self._streamer: zstandard.ZstdCompressor | None = None  # its compressor, reused
        self.streamed = 0  # frames compressed streaming (no frame from the budget)
        self.size = 0  # the length of the frame being filled or streamed
        self.begun = 0  # frames begun so far
        self.filled = 0  # the bytes given to it so far
        self._local = threading.local()  # one compressor per worker thread

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            if self.buffer is None and self.stream is None:
                self._begin_frame()
            take = min(len(view), self.size - self.filled)
            if self.buffer is not None:
                self.buffer[self.filled : self.filled + take] = view[:take]
            else:
                self._streamed_write(view[:take])
            self.filled += take
            view = view[take:]
            if self.filled == self.size:
                if self.buffer is not None:
                    self._submit()
                else:
                    self._end_stream()
        # write what is ready, free it; never waiting for a write (the writer's own pace)
        while self.pending and self.pending[0][0].done() and self._writer_free():
            self._write_oldest()

    def end(self) -> None:
        if self.stream is not None:
            # a pledged size cannot shrink; _compress_to checks the size before `end`
            raise IntegrityError(
                f"object ended {self.size - self.filled} bytes into a frame it pledged"
            )
        if self.buffer is not None and self.filled:
            self.size = self.filled  # only after a size check failed elsewhere
            self._submit()
        while self.pending:
            self._write_oldest()
        self._written()

    def __enter__(self) -> _ParallelFrames:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: object
    ) -> None:
        """`close`, told the copy's own error if one is unwinding out of the block."""
        self.close(unwinding=error)

    def close(self, unwinding: BaseException | None = None) -> None:
        """Stop the workers and give every frame back. `unwinding`: the copy's own error, on
        its way out; a miscount of the budget is then logged, not raised over it."""
        for future, _ in self.pending:
            future.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.writer.shutdown(wait=True)  # nothing writes to the sink after close
        writing, self.writing = self.writing, None
        failed = writing.exception() if writing is not None else None
        if failed is not None and unwinding is not None:  # said, not lost under the other
            log.warning("storage.frame_write_failed", error=str(failed), unwinding=str(unwinding))
        self.pending.clear()
        self.spare.clear()
        self.buffer = None
        self.stream = self._streamer = None
        if self.held:
            held, self.held = self.held, 0
            self.budget.give_back(held, self.level, unwinding=unwinding)

    def _begin_frame(self) -> None:
        """The next frame: in a buffer of the budget's or of this copy's, else streaming."""
        if self.left <= 0:
            raise IntegrityError("object is longer than its frames")
        self.size = self._next_size()
        self.left -= self.size
        self.begun += 1
        self.filled = 0
        self.buffer = self._new_buffer()
        if self.buffer is None:
            while self.pending:  # frames stay in order (none pending unless held)
                self._write_oldest()
            self._written()  # the stream writes to the sink from this thread
            if self._streamer is None:
                self._streamer = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
            self.stream = self._streamer.stream_writer(self.sink, size=self.size, closefd=False)
            self.streamed += 1

    def _next_size(self) -> int:
        """The next frame's size: `FRAME_BYTES`, except at both ends when frames compress side
        by side. The first `RAMP_FRAMES` double up to it (1, 2, 4 and 8 MiB): a worker starts
        on the first MiB instead of waiting for 16 to be read while the other CPUs idle. The
        last 16-32 MiB go in quarters: the workers end together instead of one compressing
        a whole frame alone after the reading has ended. Each frame declares its size, so
        frames.py reads any mix (docs/benchmarks.md, issue 19)."""
        size = FRAME_BYTES
        if self.workers > 1:
            if self.begun < RAMP_FRAMES:
                size = FRAME_BYTES >> (RAMP_FRAMES - self.begun)
            elif self.left < 2 * FRAME_BYTES:  # `left <= FRAME_BYTES` came too late: after
                size = FRAME_BYTES // TAIL_FRAMES  # the ramp's 15 MiB, 1 GiB ended [.., 16, 1]
        return min(size, self.left)

    def _streamed_write(self, data: memoryview) -> None:
        assert self.stream is not None
        self.stream.write(data)

    def _end_stream(self) -> None:
        assert self.stream is not None
        self.stream.flush(zstandard.FLUSH_FRAME)
        self.stream = None

    def _new_buffer(self) -> mmap.mmap | None:
        """A buffer for the next frame, or None: stream it (this copy holds no frame and the
        budget has none free)."""
        while True:
            if self.spare:
                return self.spare.popleft()
            if self.budget.take(self.level):
                self.held += 1
                self._streamer = None  # its context is freed: this copy has frames now
                return frame_buffer(FRAME_BYTES)
            if not self.held:
                return None
            # Budget spent and this copy holds frames (none spare, so all of them pending):
            # write the oldest, its buffer comes back to `spare`.
            self._write_oldest()

    def _submit(self) -> None:
        assert self.buffer is not None
        while len(self.pending) >= self.workers:  # bounded: wait for the oldest frame
            self._write_oldest()
        # The buffer travels in a list that this thread empties once the frame is compressed,
        # so then nothing else refers to it (not the pool's record of the call, which may
        # outlive the result for a moment): the buffers a copy gives back at `close` are freed
        # at once.
        handed = [self.buffer]
        self.pending.append((self.pool.submit(self._frame_of, handed, self.size), handed))
        self.buffer = None

    def _write_oldest(self) -> None:
        future, handed = self.pending.popleft()
        frame = future.result()
        del future
        self.spare.append(handed.pop())
        self._written()  # one frame written at a time: its output is the only one held past it
        self.writing = self.writer.submit(self.sink.write, frame)

    def _writer_free(self) -> bool:
        return self.writing is None or self.writing.done()

    def _written(self) -> None:
        """Wait for the frame being written; its error (a full disk) is raised here."""
        writing, self.writing = self.writing, None
        if writing is not None:
            writing.result()

    def _frame_of(self, handed: list[mmap.mmap], size: int) -> bytes:
        buffer = handed.pop()
        try:
            return self._compress(buffer, size)
        finally:
            handed.append(buffer)

    def _compress(self, buffer: mmap.mmap, size: int) -> bytes:
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
            self._local.compressor = compressor
        with memoryview(buffer) as view:
            return compressor.compress(view[:size])


def frame_buffer(size: int) -> mmap.mmap:
    """A frame's input buffer: anonymous memory of its own, given back to the kernel as soon
    as the buffer is dropped. From malloc, 16 MiB buffers freed by one copy's thread and
    allocated by another's stayed in the freeing thread's arena: 4 copies of 256 MiB at once
    under a 3-frame budget peaked at 191-197 MiB RSS with bytearrays, 144 MiB with mapped
    buffers (bench/frame_memory.py, docs/benchmarks.md)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


class WritebackAsYouGo:
    """A file writer that starts the disk write of every `every` bytes as they are written.

    The kernel would otherwise keep a large copy in dirty pages until the final fsync (its
    own writeback starts at 10% of RAM or after 30 s), which then writes it all while
    nothing else happens: on a 125 MB/s EBS volume, seconds per GiB after the download has
    finished. POSIX_FADV_DONTNEED on a range starts writeback of its dirty pages without
    waiting and drops its clean ones; each window is advised once as it is filled (starting
    its write) and again one window later (dropping its pages, clean by then: a copy is
    rarely read back, the cache is better kept for others). The fsync only waits for the
    tail. Only a hint: durability still comes from the caller's fsync.
    """

    def __init__(self, sink: IO[bytes], every: int = WRITEBACK_BYTES) -> None:
        self.sink = sink
        self.every = every
        self._written = 0
        self._window_start = 0  # start of the window being filled
        self._previous_start = 0  # start of the window before it (advised once so far)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        written = self.sink.write(data)
        self._written += written
        if self._written - self._window_start >= self.every:
            self._advise()
        return written

    def flush(self) -> None:
        self.sink.flush()

    def _advise(self) -> None:
        self.sink.flush()
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):  # only a hint: the final fsync is what counts
                os.posix_fadvise(
                    self.sink.fileno(),
                    self._previous_start,
                    self._written - self._previous_start,
                    os.POSIX_FADV_DONTNEED,
                )
        self._previous_start, self._window_start = self._window_start, self._written


def is_mount_point(path: Path) -> bool:
    """Whether `path` is where a file system is mounted (a bind mount counts too)."""
    if os.path.ismount(path):
        return True
    wanted = os.path.realpath(path)
    try:
        lines = MOUNTINFO.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4 and _unescape_mountinfo(fields[4]) == wanted:
            return True
    return False


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a small file atomically: temp, fsync, rename, fsync directory."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with temp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        fsync_directory(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
