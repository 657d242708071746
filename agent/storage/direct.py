"""Writing a large restored file straight to the disk (O_DIRECT), around the page cache.

A restore must leave its file durable, so every byte goes to the disk before the command
reports success. Written through the page cache, each byte is copied into a page, written
back by the kernel's flusher and dropped again: on this 2-CPU machine 1.9-2.0 CPU-seconds
per GiB of system time (1 GiB in 16 MiB writes, POSIX_FADV_DONTNEED per window, fsync;
`zstd -d` decompresses the same GiB in ~2.4), CPU the decompression and the SHA-256 check
need. With O_DIRECT the disk reads the bytes from the process's own buffer: 0.1-0.2
CPU-seconds per GiB, and the final flush finds no dirty data (docs/benchmarks.md, issue 19).

Direct I/O wants the buffer's address, the file offset and the length aligned to the
device's logical block (512 or 4096 bytes), so `DirectWriter` copies the caller's chunks
into one page-aligned buffer (mmap) and writes it whole each time it fills; the tail that
is not a multiple of `ALIGN` is written after clearing O_DIRECT. A filesystem that refuses
O_DIRECT (`DirectWriter.open` returns None) or an EINVAL from a direct write (an alignment
this module did not expect) falls back to plain writes: only slower. Durability still comes
from the caller's fsync or syncfs (O_DIRECT neither flushes the device's cache nor writes
the file's metadata); the restore's guarantees (docs/restore.md) do not change.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

ALIGN = 4096  # a multiple of every logical block size Linux devices use (512, 4096)
# One direct write (the largest request this disk takes at once, max_sectors_kb 4096); two
# buffers, one written while the other fills: 8 MiB mapped, as one 8 MiB buffer was before.
BUFFER_BYTES = 4 << 20


class DirectWriter:
    """Writes a file opened for writing at `fd` (at offset 0, empty) with O_DIRECT.

    Use `open`; `write` every chunk, then `close` (writes the rest; the caller fsyncs).
    Leaving the `with` block by an exception releases the buffers without writing more.

    A direct write returns only once the disk has the bytes, so a writer that filled its
    buffer and wrote it in turn left the disk idle while it filled the next one and waited
    for the next chunk (at 2026-12-01 15:10, under load, a 1 GiB restore spent 6.2 s in
    writes and 6.1 s waiting for chunks, one after the other). With `overlap` (the default)
    the full buffers are written by a thread of their own, one at a time and in order,
    while the caller fills the other buffer: the disk always has the next write queued
    when the caller keeps up, and the caller waits only when both buffers are full. An
    error from a write in that thread is raised by the next `write` or by `close`; nothing
    is written after it."""

    def __init__(self, fd: int, buffer_bytes: int = BUFFER_BYTES, *, overlap: bool = True) -> None:
        if buffer_bytes <= 0 or buffer_bytes % ALIGN:
            raise ValueError(f"buffer_bytes must be a positive multiple of {ALIGN}")
        self.fd = fd
        self.direct = True  # False once falling back to plain writes
        self.written = 0  # bytes handed to the kernel so far
        count = 2 if overlap else 1
        self._map = mmap.mmap(-1, count * buffer_bytes)  # anonymous: page-aligned
        whole = memoryview(self._map)
        self._buffers = [whole[i * buffer_bytes : (i + 1) * buffer_bytes] for i in range(count)]
        whole.release()
        self._current = 0  # the buffer being filled
        self._buffer = self._buffers[0]
        self._filled = 0
        # the buffer index -> its write under way in the writer thread (overlap only)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="direct-write") if overlap else None
        self._pending: dict[int, Future[None]] = {}
        self._failed = False  # a write failed: the ones queued after it write nothing
        self._released = False

    @classmethod
    def open(
        cls, fd: int, buffer_bytes: int = BUFFER_BYTES, *, overlap: bool = True
    ) -> DirectWriter | None:
        """A writer for `fd` with O_DIRECT set, or None where the filesystem has none
        (then `fd` is unchanged)."""
        direct = getattr(os, "O_DIRECT", 0)
        if not direct:  # pragma: no cover - not Linux
            return None
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | direct)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & direct:  # accepted, silently ignored
            return None
        return cls(fd, buffer_bytes, overlap=overlap)

    def __enter__(self) -> DirectWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
        else:
            self._release()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        size = len(view)
        room = len(self._buffer)
        while view:
            if not self._filled and self._pending:
                self._reuse()
            take = min(len(view), room - self._filled)
            self._buffer[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == room:
                self._hand_over()
        return size

    def close(self) -> None:
        """Write what is buffered (its aligned head directly, the tail plainly), after
        every write handed to the writer thread; raise the first error of any of them."""
        if self._released:
            return
        try:
            self._wait_all()
            head = self._filled - self._filled % ALIGN
            if head:
                self._write(self._buffer[:head])
            if self._filled > head:
                self._plain()
                self._write(self._buffer[head : self._filled])
            self._filled = 0
        finally:
            self._release()

    def _hand_over(self) -> None:
        """The current buffer is full: write it (in the writer thread with `overlap`, and
        go on with the other buffer)."""
        if self._pool is None:
            self._write(self._buffer)
        else:
            self._pending[self._current] = self._pool.submit(self._write, self._buffer)
            self._current = (self._current + 1) % len(self._buffers)
            self._buffer = self._buffers[self._current]
        self._filled = 0

    def _reuse(self) -> None:
        """Before filling the current buffer again: its last write done (its error raised)."""
        under_way = self._pending.pop(self._current, None)
        if under_way is not None:
            under_way.result()

    def _wait_all(self) -> None:
        """Every write handed over done, in the order they were made; the first error raised
        (a write queued behind a failed one writes nothing: `_write`)."""
        pending, self._pending = self._pending, {}
        order = [(self._current + step) % len(self._buffers) for step in range(len(self._buffers))]
        for index in order:  # the oldest write is the current buffer's, then the next one's
            if index in pending:
                pending[index].result()

    def _write(self, view: memoryview) -> None:
        if self._failed:  # a write queued behind a failed one: not a byte more
            raise OSError(errno.EIO, "an earlier write to this file failed")
        try:
            self._write_all(view)
        except BaseException:
            self._failed = True
            raise

    def _write_all(self, view: memoryview) -> None:
        while view:
            try:
                done = os.write(self.fd, view)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self.direct:
                    raise
                self._plain()  # the device wants another alignment: nothing was written
                continue
            self.written += done
            view = view[done:]
            if view and self.direct and done % ALIGN:
                self._plain()  # a short write left the rest unaligned

    def _plain(self) -> None:
        if self.direct:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            self.direct = False

    def _release(self) -> None:
        if self._released:
            return
        self._released = True
        if self._pool is not None:  # a write under way finishes first: it reads the buffer
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        for buffer in self._buffers:
            buffer.release()
        # A slice may still be referenced (by the traceback of an error being raised): then
        # the mapping goes with its last reference, and that error stays the one raised.
        with contextlib.suppress(BufferError):
            self._map.close()
