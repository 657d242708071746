"""read_ahead: chunks in order, errors raised in the caller, an early stop ends the thread."""

from __future__ import annotations

import io
import os
import threading
import time

import pytest

from agent.storage.readahead import chunks, read_ahead


def test_every_chunk_comes_through_in_order():
    data = os.urandom(1 << 20)
    source = io.BytesIO(data)

    assert b"".join(read_ahead(lambda: source.read(4096), depth=2)) == data


def test_reading_happens_in_another_thread():
    readers: set[str] = set()
    parts = [b"a", b"b", b""]

    def read() -> bytes:
        readers.add(threading.current_thread().name)
        return parts.pop(0)

    assert list(read_ahead(read)) == [b"a", b"b"]
    assert readers == {"read-ahead"}


def test_the_producer_stays_at_most_depth_chunks_ahead():
    produced = 0

    def read() -> bytes:
        nonlocal produced
        produced += 1
        return b"x"

    chunks = read_ahead(read, depth=3)
    next(chunks)
    time.sleep(0.3)  # give the producer every chance to run ahead

    assert produced <= 1 + 3 + 1  # the one taken, the queue, the one waiting to be put
    chunks.close()


def test_an_error_in_the_producer_is_raised_in_the_caller_after_the_good_chunks():
    parts: list[bytes | Exception] = [b"good", OSError("disk read failed")]

    def read() -> bytes:
        part = parts.pop(0)
        if isinstance(part, Exception):
            raise part
        return part

    chunks = read_ahead(read)
    assert next(chunks) == b"good"
    with pytest.raises(OSError, match="disk read failed"):
        next(chunks)


def test_closing_early_stops_the_producer():
    def read() -> bytes:
        return b"endless"

    before = threading.active_count()
    chunks = read_ahead(read, depth=2)
    assert next(chunks) == b"endless"
    chunks.close()

    assert threading.active_count() == before
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_small_sizes_are_read_directly_and_large_or_unknown_ones_ahead():
    def reader_threads(size: int | None) -> set[str]:
        names: set[str] = set()
        parts = [b"a", b"b", b""]

        def read() -> bytes:
            names.add(threading.current_thread().name)
            return parts.pop(0)

        assert list(chunks(read, size)) == [b"a", b"b"]
        return names

    assert reader_threads(2) == {threading.current_thread().name}
    assert reader_threads(64 << 20) == {"read-ahead"}
    assert reader_threads(None) == {"read-ahead"}
