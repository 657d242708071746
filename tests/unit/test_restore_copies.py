"""A small copy is read whole and decompressed in one call (copies.py `_whole`, issue 19).

Only a copy that is exactly right comes out of the one-call path; every damaged or planted
copy is read again the usual way and fails with the very error it always did. Each case is
checked against the usual way alone (`WHOLE_COPY_BYTES` 0).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import zstandard

from agent.restore import copies
from agent.restore.copies import CorruptCopy, verified_chunks
from tests.support.stored import stored_record

DATA = b"a small stored file, read whole\n" * 64


def _read(volume, record) -> bytes:
    return b"".join(verified_chunks(volume, record))


def test_a_good_small_copy_is_read_without_the_stream_reader(volume, monkeypatch):
    record = stored_record(volume, "k", DATA)

    def unused(*_args, **_kwargs):
        raise AssertionError("read the usual way")

    monkeypatch.setattr(volume, "copy_chunks", unused)
    assert _read(volume, record) == DATA
    assert _read(volume, record) == DATA  # the directory descriptor, cached, still serves


def _extra_frame(path, record):
    path.write_bytes(path.read_bytes() + zstandard.ZstdCompressor().compress(b"more"))


def _truncated(path, record):
    path.write_bytes(path.read_bytes()[:-6])


def _other_bytes(path, record):
    path.write_bytes(zstandard.ZstdCompressor().compress(DATA[:-1] + b"?"))


def _longer(path, record):
    path.write_bytes(zstandard.ZstdCompressor().compress(DATA + b"x"))


def _shorter(path, record):
    path.write_bytes(zstandard.ZstdCompressor().compress(DATA[:-1]))


def _not_zstd(path, record):
    path.write_bytes(b"not a zstd frame at all" * 10)


def _symlink(path, record):
    decoy = path.with_name("decoy")
    decoy.write_bytes(path.read_bytes())
    path.unlink()
    os.symlink(decoy, path)


def _missing(path, record):
    path.unlink()


def _fifo(path, record):
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(
    "damage",
    [
        _extra_frame,
        _truncated,
        _other_bytes,
        _longer,
        _shorter,
        _not_zstd,
        _symlink,
        _missing,
        _fifo,
    ],
)
def test_a_damaged_copy_fails_as_the_usual_way_says(volume, monkeypatch, damage):
    record = stored_record(volume, "k", DATA)
    path = volume.copy_path(record.sha256)
    path.chmod(0o600)
    damage(path, record)

    with pytest.raises((CorruptCopy, OSError)) as whole:
        _read(volume, record)
    monkeypatch.setattr(copies, "WHOLE_COPY_BYTES", 0)
    with pytest.raises((CorruptCopy, OSError)) as usual:
        _read(volume, record)

    assert type(whole.value) is type(usual.value)
    assert str(whole.value) == str(usual.value)


def test_a_copy_far_larger_than_its_record_is_not_read_whole(volume, monkeypatch):
    record = stored_record(volume, "k", DATA)
    path = volume.copy_path(record.sha256)
    path.chmod(0o600)
    path.write_bytes(os.urandom(len(DATA) * 4))  # incompressible: larger than any copy of DATA
    reads = []
    real_read = os.read
    monkeypatch.setattr(copies.os, "read", lambda fd, n: reads.append(n) or real_read(fd, n))

    with pytest.raises(CorruptCopy):
        _read(volume, record)
    assert reads == []  # refused on its size, before a byte was read


def test_each_thread_makes_one_decompressor_and_a_failed_copy_leaves_it_clean(volume, monkeypatch):
    """The decompressor of `_whole` is made once per thread (making one per copy was 6% of
    a small-file restore), and a copy it failed on leaves nothing behind for the next one:
    a truncated frame, then good copies, each read exactly, with no decompressor made."""
    made = []
    real = zstandard.ZstdDecompressor

    def counted(*args, **kwargs):
        made.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(copies, "_local", threading.local())  # none made yet, in any thread
    good = [stored_record(volume, f"k{n}", DATA + bytes([n])) for n in range(3)]
    broken = stored_record(volume, "broken", DATA * 2)
    path = volume.copy_path(broken.sha256)
    path.chmod(0o600)
    _truncated(path, broken)
    monkeypatch.setattr(zstandard, "ZstdDecompressor", counted)  # volume.py's too

    with pytest.raises(CorruptCopy):
        _read(volume, broken)  # fails in `_whole`, then the usual way (its own) says why
    assert made == [threading.get_ident()] * 2
    made.clear()

    assert [_read(volume, record) for record in good] == [DATA + bytes([n]) for n in range(3)]
    assert made == []  # the one `_whole` made above, used again
    with ThreadPoolExecutor(2) as pool:
        read = list(pool.map(lambda r: _read(volume, r), good * 4))
    assert read == [DATA + bytes([n]) for n in range(3)] * 4
    assert len(made) == len(set(made)) <= 2  # one per pool thread


def test_a_record_without_a_size_is_refused_before_its_copy_is_read(volume, monkeypatch):
    """Every copy the agent makes is recorded with its size. A record without one (a journal
    line cut or edited) put no bound on what its copy expands to: a planted copy of a few KiB
    went to the target whole, 256 MiB of it (the restore review, 2026-12-02)."""
    record = dataclasses.replace(stored_record(volume, "small.txt", b"hello\n"), size=None)
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))
    volume.copy_path(record.sha256).write_bytes(bomb)  # the copy swapped on the volume
    opened: list[str] = []
    real = type(volume).copy_chunks
    monkeypatch.setattr(
        type(volume),
        "copy_chunks",
        lambda self, *args, **kwargs: (opened.append("copy"), real(self, *args, **kwargs))[1],
    )

    with pytest.raises(CorruptCopy, match="gives no size"):
        next(verified_chunks(volume, record))
    assert opened == []
