"""Decompress a copy made of several zstd frames on every core, in order, memory bounded.

One zstd frame decompresses on one core only: ~660 MB/s here, where `zstd -d` reaches
~900 MB/s and the restore must also hash and write every byte. A copy written as a
sequence of independent frames (volume.py: one per `FRAME_BYTES` of input, each declaring
its content size) can be decompressed a frame per thread: libzstd releases the GIL while
it decompresses. A concatenation of frames is a valid zstd stream, so `zstd -d`, verify and
the serial reader read such a copy unchanged.

The copy is untrusted: `scan` walks the frame and block headers (RFC 8878, section 3.1)
without decompressing, and accepts only plain zstd frames that each declare a content size
of at most `MAX_FRAME_BYTES`, within the window limit, and whose declared sizes add up to
no more than the caller's limit. Anything else (a single frame, an old copy, a skippable
frame, a truncated or damaged header) returns None and the caller reads serially as
before, where the decompressor itself reports the damage. A restore does not scan first:
`decompress_copy` walks each frame just before it is handed to a worker (the copy is read
once, in order, while the frames before it decompress), and reads the rest serially from
the first frame `scan` would refuse. Each frame is decompressed in
one call that allocates exactly its declared size and fails when the frame holds a
different amount or its content checksum does not match; at most `workers + 1` frames are
in memory at once (decompressing, plus the one the caller is using).
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import zstandard

MAX_FRAME_BYTES = 64 << 20  # the most one frame may declare: decompressed whole in memory
# libzstd fills blocks up to 128 KiB; a frame of many tiny blocks is no copy of ours and
# would make the scan cost a read per few bytes: read serially instead.
MIN_BLOCK_BYTES = 4096
# The kernel is asked to read this far ahead of `decompress_copy`'s walk through the frame
# headers (the page cache's memory, not this process's): a few frames of the bench's data.
AHEAD_BYTES = 32 << 20
SERIAL_CHUNK = 1 << 20  # what `_serial_from` reads and yields at a time
WALK_READ = 1 << 20  # what the walk reads at a time past its first guess (`_Window`)
_HEADER_MAX = 18  # magic 4 + descriptor 1 + window 1 + dictionary id 4 + content size 8
_MAGIC = b"\x28\xb5\x2f\xfd"
_BLOCK_RLE = 1
_BLOCK_RESERVED = 3


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int  # where the frame starts in the copy
    length: int  # its compressed bytes, checksum included
    content_size: int  # the bytes it declares it decompresses to


def scan(fd: int, *, limit: int | None, max_window: int) -> list[Frame] | None:
    """The frames of the copy open at `fd`, or None when it is not a sequence of two or
    more frames this module may decompress in parallel (see the module docstring): the
    whole copy's list, for inspecting a copy (the tests walk written copies with it); a
    restore walks frame by frame instead (`decompress_copy`)."""
    end = os.fstat(fd).st_size
    frames: list[Frame] = []
    offset = total = 0
    while offset < end:
        frame = _frame_at(partial(_pread, fd), offset, end, max_window)
        if frame is None:
            return None
        total += frame.content_size
        if limit is not None and total > limit:
            return None  # the serial reader stops such a copy at the limit
        frames.append(frame)
        offset += frame.length
    return frames if len(frames) > 1 else None


def _pread(fd: int, position: int, length: int) -> bytes:
    return os.pread(fd, length, position)


def _frame_at(
    read: Callable[[int, int], bytes | bytearray], offset: int, end: int, max_window: int
) -> Frame | None:
    """The frame at `offset` if this module may decompress it in parallel; `read(position,
    length)` gives the copy's bytes there (fewer at its end)."""
    head = read(offset, _HEADER_MAX)
    if not head.startswith(_MAGIC):
        return None  # a skippable frame or garbage: the serial reader decides
    try:
        params = zstandard.get_frame_parameters(head)
        position = offset + zstandard.frame_header_size(head)
    except zstandard.ZstdError:
        return None
    size = params.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size > MAX_FRAME_BYTES or params.dict_id:
        return None
    if params.window_size > max_window:
        return None
    blocks_left = size // MIN_BLOCK_BYTES + 4
    while True:  # blocks: a 3-byte little-endian header each, last-block flag in bit 0
        blocks_left -= 1
        if blocks_left < 0:
            return None
        header = read(position, 3)
        if len(header) < 3:
            return None
        value = int.from_bytes(header, "little")
        kind = (value >> 1) & 3
        if kind == _BLOCK_RESERVED:
            return None
        position += 3 + (1 if kind == _BLOCK_RLE else value >> 3)
        if value & 1:
            break
        if position > end:
            return None
    if params.has_checksum:
        position += 4
    if position > end:
        return None
    return Frame(offset, position - offset, size)


def decompress_copy(
    fd: int, *, limit: int | None, workers: int, max_window: int
) -> Iterator[bytes] | None:
    """The copy's bytes in order, `workers` frames decompressing ahead of the caller, or None
    when the copy does not start with a frame this module may decompress in parallel
    followed by another (the caller reads it serially). A damaged frame raises
    zstandard.ZstdError when the caller reaches it; closing the iterator early cancels what
    has not started and waits for what has (the caller may close `fd` once it returns).

    The frames are found as the workers reach them. A restore used to `scan` first, which
    walked every block header of the copy before the first frame could start, i.e. read
    the whole copy from the disk first (190 MB, 0.8-1.2 s under load, 2026-12-01 15:15),
    while no core decompressed and the disk wrote nothing. Here the first frame starts once
    its own header is walked, the kernel reads `AHEAD_BYTES` ahead of the walk, and the
    frames after it are walked one at a time, `workers` ahead of the caller. A later frame
    that `scan` would refuse (or whose declared size takes the total past `limit`) ends
    the parallel part: the rest of the copy, from that frame on, is decompressed serially,
    where the decompressor reports any damage and the caller's size check any excess, as
    with a serial read of the whole copy."""
    end = os.fstat(fd).st_size
    _advise(fd, 0, AHEAD_BYTES)
    first = _walked_frame(fd, 0, end, max_window, 0)
    if first is None or first[0].length >= end:
        return None  # not a frame of ours, or the only one
    if limit is not None and first[0].content_size > limit:
        return None
    return _decompress_walked(fd, first, end, limit, max(1, workers), max_window)


def _decompress_walked(
    fd: int,
    first: tuple[Frame, memoryview],
    end: int,
    limit: int | None,
    workers: int,
    max_window: int,
) -> Iterator[bytes]:
    rest_from: int | None = None  # where the serial part starts, if there is one

    def walk() -> Iterator[tuple[Frame, memoryview]]:
        nonlocal rest_from
        offset, total, advised = first[0].length, first[0].content_size, AHEAD_BYTES
        yield first
        guess = first[0].length
        while offset < end:
            while offset + AHEAD_BYTES // 2 > advised:  # frames may be longer than the step
                _advise(fd, advised, AHEAD_BYTES // 2)
                advised += AHEAD_BYTES // 2
            found = _walked_frame(fd, offset, end, max_window, guess)
            if found is None or (limit is not None and total + found[0].content_size > limit):
                rest_from = offset
                return
            total += found[0].content_size
            guess = found[0].length
            yield found
            offset += found[0].length

    pending: deque[Future[bytes]] = deque()
    upcoming = walk()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="frames")
    try:
        for frame, data in upcoming:
            pending.append(pool.submit(_decompress_bytes, frame, data, max_window))
            if len(pending) >= workers:
                break
        while pending:
            out = pending.popleft().result()
            following = next(upcoming, None)
            if following is not None:
                pending.append(pool.submit(_decompress_bytes, *following, max_window))
            yield out
            del out
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if rest_from is not None:
        yield from _serial_from(fd, rest_from, max_window)


class _Window:
    """The copy's bytes from `base`, read in as few preads as the walk allows: first as many
    as the frame before was long (`guess`, + 64 KiB), else `WALK_READ` at a time. A frame's
    block headers were read one 3-byte pread each (~130 a frame: at load, each a wait for
    the GIL on the way back), and its bytes once more by the worker; now the walk reads them
    once, in order, and at most one read's worth more than the frame is held."""

    def __init__(self, fd: int, base: int, end: int, guess: int) -> None:
        self.fd, self.base, self.end = fd, base, end
        self.data = b""
        self.first = guess + (64 << 10) if guess else WALK_READ

    def read(self, position: int, length: int) -> bytes:
        start = position - self.base
        while len(self.data) < start + length and self.base + len(self.data) < self.end:
            want = max(start + length - len(self.data), WALK_READ if self.data else self.first)
            more = os.pread(self.fd, want, self.base + len(self.data))
            if not more:
                break
            self.data = self.data + more if self.data else more
        return self.data[start : start + length]


def _walked_frame(
    fd: int, offset: int, end: int, max_window: int, guess: int
) -> tuple[Frame, memoryview] | None:
    """The frame at `offset` (as `_frame_at` finds it) and its bytes, read in one go."""
    window = _Window(fd, offset, end, guess)
    frame = _frame_at(window.read, offset, end, max_window)
    if frame is None or len(window.data) < frame.length:
        return None
    return frame, memoryview(window.data)[: frame.length]


def _decompress_bytes(frame: Frame, data: memoryview, max_window: int) -> bytes:
    """One frame's bytes (read by the walk), decompressed in one call that allocates exactly
    its declared size; a frame holding a different amount, or whose checksum does not match,
    raises zstandard.ZstdError."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=max_window)
    out = decompressor.decompress(data, max_output_size=frame.content_size)
    if len(out) != frame.content_size:
        raise zstandard.ZstdError(f"frame at {frame.offset} holds {len(out)} bytes")
    return out


def _serial_from(fd: int, offset: int, max_window: int) -> Iterator[bytes]:
    """The rest of the copy from `offset` (a frame boundary), read by one decompressor
    across frames, as the serial reader reads a whole copy."""
    with os.fdopen(os.dup(fd), "rb") as raw:
        raw.seek(offset)
        decompressor = zstandard.ZstdDecompressor(max_window_size=max_window)
        with decompressor.stream_reader(raw, read_size=SERIAL_CHUNK, read_across_frames=True) as r:
            while chunk := r.read(SERIAL_CHUNK):
                yield chunk


def _advise(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start reading a byte range now (POSIX_FADV_WILLNEED, asynchronous),
    so that a copy not in the page cache (a restore days after the backup) is read while the
    frames before it decompress. Only a hint (page cache, not this process's memory): errors
    are ignored."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
