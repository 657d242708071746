"""DirectWriter (agent/storage/direct.py): a large restored file written with O_DIRECT.

Whatever the chunking, the file holds exactly the bytes written; the aligned part goes
through direct I/O and only the unaligned tail through the page cache; an EINVAL from a
direct write falls back to plain writes without losing or repeating a byte; any other
error reaches the caller. pytest's tmp_path is on the disk's filesystem here (ext4); where
it has no O_DIRECT (tmpfs before Linux 6.6) the direct-I/O tests are skipped.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.restore.restorer import Restorer
from agent.restore.targets import DirectoryTarget
from agent.storage import direct
from agent.storage.direct import ALIGN, DirectWriter
from agent.storage.volume import WRITEBACK_BYTES, Volume
from tests.support.stored import placed_plan

BUFFER = 4 * ALIGN  # small, so that a few KiB cross several buffer fills


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    descriptor = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    yield descriptor
    os.close(descriptor)


def _writer(fd: int) -> DirectWriter:
    writer = DirectWriter.open(fd, BUFFER)
    if writer is None:
        pytest.skip("this filesystem has no O_DIRECT")
    return writer


def _chunks(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    start = 0
    for size in sizes:
        yield data[start : start + size]
        start += size
    if start < len(data):
        yield data[start:]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    total=st.integers(0, 6 * BUFFER + 3),
    sizes=st.lists(st.integers(1, 3 * BUFFER), max_size=8),
)
def test_the_file_holds_exactly_the_bytes_written_however_they_are_chunked(
    tmp_path: Path, total: int, sizes: list[int]
) -> None:
    path = tmp_path / f"out-{total}-{len(sizes)}"
    path.unlink(missing_ok=True)
    data = os.urandom(total)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        writer = _writer(descriptor)
        with writer:
            for chunk in _chunks(data, sizes):
                assert writer.write(chunk) == len(chunk)
        assert writer.written == total
    finally:
        os.close(descriptor)
    assert path.read_bytes() == data


def test_full_buffers_go_direct_and_only_the_unaligned_tail_through_the_page_cache(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[tuple[int, bool]] = []
    real_write = os.write

    def noting(descriptor: int, data: memoryview) -> int:
        writes.append((len(data), bool(fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT)))
        return real_write(descriptor, data)

    writer = _writer(fd)
    monkeypatch.setattr(direct.os, "write", noting)
    data = os.urandom(2 * BUFFER + ALIGN + 100)
    with writer:
        writer.write(data)

    assert writes == [(BUFFER, True), (BUFFER, True), (ALIGN, True), (100, False)]
    assert (tmp_path / "out").read_bytes() == data


def test_an_einval_from_a_direct_write_falls_back_to_plain_writes(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    refused: list[int] = []

    def refusing_direct(descriptor: int, data: memoryview) -> int:
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))  # as a device with a larger logical block would
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(descriptor, data)

    writer = _writer(fd)
    monkeypatch.setattr(direct.os, "write", refusing_direct)
    data = os.urandom(3 * BUFFER + 7)
    with writer:
        writer.write(data)

    assert refused == [BUFFER] and not writer.direct
    assert (tmp_path / "out").read_bytes() == data


def test_a_short_direct_write_is_finished_without_losing_a_byte(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = 0

    def short_once(descriptor: int, data: memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(descriptor, data[: ALIGN + 512])  # unaligned: the rest goes plain
        return real_write(descriptor, data)

    writer = _writer(fd)
    monkeypatch.setattr(direct.os, "write", short_once)
    data = os.urandom(2 * BUFFER)
    with writer:
        writer.write(data)

    assert not writer.direct
    assert (tmp_path / "out").read_bytes() == data


def test_a_disk_error_reaches_the_caller_and_nothing_more_is_written(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(descriptor: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = _writer(fd)
    monkeypatch.setattr(direct.os, "write", full)
    with pytest.raises(OSError, match="No space left"), writer:
        writer.write(os.urandom(BUFFER + 1))

    assert (tmp_path / "out").stat().st_size == 0


def test_a_buffer_that_is_not_a_multiple_of_the_alignment_is_refused(fd: int) -> None:
    with pytest.raises(ValueError, match="multiple"):
        DirectWriter(fd, ALIGN + 1)


def test_a_large_restored_file_is_written_direct_and_a_small_one_is_not(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[DirectWriter] = []
    real_open = DirectWriter.open.__func__  # type: ignore[attr-defined]

    def noting(cls: type[DirectWriter], fd: int, *args: int) -> DirectWriter | None:
        writer = real_open(cls, fd, *args)
        if writer is None:
            pytest.skip("this filesystem has no O_DIRECT")
        opened.append(writer)
        return writer

    monkeypatch.setattr(DirectWriter, "open", classmethod(noting))
    large = os.urandom(WRITEBACK_BYTES + 12345)  # not a multiple of ALIGN: a plain tail
    out = tmp_path / "out"

    Restorer(DirectoryTarget(volume, out)).run(placed_plan(volume, ["small"], b"small\n"))
    assert opened == []
    summary = Restorer(DirectoryTarget(volume, out)).run(placed_plan(volume, ["large"], large))

    assert summary.ok and len(opened) == 1 and opened[0].written == len(large)
    assert (out / "large").read_bytes() == large and (out / "small").read_bytes() == b"small\n"


@pytest.mark.parametrize("size", [ALIGN + 100, 100, BUFFER + ALIGN])
def test_a_disk_error_writing_the_last_bytes_is_the_error_raised(
    fd: int, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    writer = _writer(fd)
    writer.write(os.urandom(size) if size < BUFFER else os.urandom(ALIGN + 1))

    def full(descriptor: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct.os, "write", full)
    with pytest.raises(OSError, match="No space left"):  # not a BufferError from the buffer
        writer.close()
    writer.close()  # and again: nothing left to do


def test_the_caller_fills_the_next_buffer_while_the_last_one_is_written(
    fd: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A direct write returns once the disk has the bytes: the caller must not wait for it
    before it fills the other buffer (docs/benchmarks.md, 2026-12-01 15:10)."""
    real_write = os.write
    caller_went_on = threading.Event()
    seen: list[bool] = []

    def slow_disk(descriptor: int, data: memoryview) -> int:
        if not seen:  # the first buffer: the disk is busy until the caller has filled the next
            seen.append(caller_went_on.wait(timeout=10))
        return real_write(descriptor, data)

    writer = _writer(fd)
    monkeypatch.setattr(direct.os, "write", slow_disk)
    data = os.urandom(BUFFER + 5)
    with writer:
        writer.write(data)  # fills buffer 1, hands it over, goes on with buffer 2
        caller_went_on.set()

    assert seen == [True]
    assert (tmp_path / "out").read_bytes() == data
    assert not any(t.name.startswith("direct-write") for t in threading.enumerate())


def test_without_overlap_every_write_is_the_callers() -> None:
    with open(os.devnull, "wb") as sink:  # the buffers, not the device: no O_DIRECT needed
        writer = DirectWriter(sink.fileno(), BUFFER, overlap=False)
        writer.write(os.urandom(3 * BUFFER))
        assert writer.written == 3 * BUFFER  # written before write() returned
        writer.close()


@pytest.mark.parametrize("failing", [1, 2, 3], ids=["first", "in-thread", "last"])
def test_an_eio_from_a_direct_write_fails_the_restore_cleanly(
    volume: Volume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int
) -> None:
    """O_DIRECT accepted by the filesystem, then the device fails a write (EIO): the file
    fails with the error named, nothing appears at the target (no file, no temp file), and
    no write is made after the failed one."""
    real_write = os.write
    direct_writes = 0

    def failing_device(descriptor: int, data: memoryview) -> int:
        nonlocal direct_writes
        if fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT:
            direct_writes += 1
            if direct_writes >= failing:
                raise OSError(errno.EIO, "Input/output error")
        return real_write(descriptor, data)

    probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        if DirectWriter.open(probe) is None:
            pytest.skip("this filesystem has no O_DIRECT")
    finally:
        os.close(probe)
    # two full buffers (the second written by the writer thread) and an aligned head
    large = os.urandom(2 * direct.BUFFER_BYTES + 3 * ALIGN + 17)
    plan = placed_plan(volume, ["large"], large)
    monkeypatch.setattr(direct.os, "write", failing_device)
    out = tmp_path / "out"

    summary = Restorer(DirectoryTarget(volume, out)).run(plan)

    [failed] = summary.failed
    assert not summary.ok and "Input/output error" in (failed.error or "")
    assert direct_writes == failing  # none after the failed one
    assert sorted(p.name for p in out.rglob("*")) == []  # no file, no .restore-*.part
    assert not any(t.name.startswith("direct-write") for t in threading.enumerate())
