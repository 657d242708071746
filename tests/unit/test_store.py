"""The backup volume: atomic, content-addressed, checksummed zstd copies, and its guards."""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import DiskFull, IntegrityError, RetryableError, VolumeNotReady
from agent.storage import volume as volume_module
from agent.storage.volume import (
    MARKER_NAME,
    CompressionSettings,
    Expectation,
    StoredCopy,
    Volume,
    WritebackAsYouGo,
    atomic_write_bytes,
)

SETTINGS = CompressionSettings(level=3, threads=1, chunk_bytes=64 << 10)
TEXT = b"The quick brown fox jumps over the lazy dog.\n" * 2000


def chunks_of(data: bytes, size: int = 8192) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def files_under(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and path.name != MARKER_NAME
    )


def objects_and_tmp(volume: Volume) -> list[str]:
    return [f for f in files_under(volume.root) if not f.startswith("journal")]


# -- a copy is durable, content-addressed and a plain .zst file ------------------------------


def test_copy_is_named_by_the_sha256_of_the_original_bytes(volume):
    copy = volume.write_copy(chunks_of(TEXT), SETTINGS)
    sha = hashlib.sha256(TEXT).hexdigest()
    assert copy.sha256 == sha
    assert copy.path == volume.root / "objects" / sha[:2] / f"{sha}.zst"
    assert (copy.size, copy.deduplicated) == (len(TEXT), False)
    assert copy.stored_size == copy.path.stat().st_size < len(TEXT)
    assert objects_and_tmp(volume) == [f"objects/{sha[:2]}/{sha}.zst"]


def test_identical_content_is_stored_once(volume):
    first = volume.write_copy(chunks_of(TEXT), SETTINGS)
    second = volume.write_copy(chunks_of(TEXT, 1000), SETTINGS)  # other chunking, same bytes
    assert second.deduplicated is True
    assert second.path == first.path
    assert second.stored_size == first.stored_size
    assert len(objects_and_tmp(volume)) == 1


def test_different_content_gets_different_copies(volume):
    one = volume.write_copy([b"one"], SETTINGS)
    two = volume.write_copy([b"two"], SETTINGS)
    assert one.path != two.path
    assert len(objects_and_tmp(volume)) == 2


def test_empty_object_is_a_valid_copy(volume):
    copy = volume.write_copy([], SETTINGS, Expectation(size=0))
    assert copy.sha256 == hashlib.sha256(b"").hexdigest()
    volume.verify_copy(copy.sha256, 0)


@pytest.mark.parametrize("threads", [1, 2])
def test_copy_carries_a_frame_content_checksum_and_size(volume, threads):
    settings = CompressionSettings(level=3, threads=threads)
    copy = volume.write_copy(chunks_of(TEXT), settings, Expectation(size=len(TEXT)))
    volume.verify_copy(copy.sha256, len(TEXT))
    params = zstandard.get_frame_parameters(copy.path.read_bytes())
    assert params.has_checksum is True
    assert params.content_size == len(TEXT)


def test_open_copy_and_verify_copy_read_the_original_bytes(volume):
    copy = volume.write_copy(chunks_of(TEXT), SETTINGS)
    with volume.open_copy(copy.sha256) as reader:
        assert reader.read() == TEXT
    volume.verify_copy(copy.sha256, len(TEXT))


@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd command-line tool is absent")
def test_the_zstd_cli_decodes_and_checks_a_copy(volume, tmp_path):
    copy = volume.write_copy(chunks_of(TEXT), SETTINGS)
    out = tmp_path / "restored"
    subprocess.run(["zstd", "-q", "-d", str(copy.path), "-o", str(out)], check=True)
    assert out.read_bytes() == TEXT
    listing = subprocess.run(
        ["zstd", "-lv", str(copy.path)], check=True, capture_output=True, text=True
    ).stdout
    assert "Check: XXH64" in listing


def test_a_corrupted_copy_fails_verification(volume):
    copy = volume.write_copy(chunks_of(TEXT), SETTINGS)
    data = bytearray(copy.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"is corrupt|has SHA-256"):
        volume.verify_copy(copy.sha256)


def test_a_missing_copy_fails_verification(volume):
    sha = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(IntegrityError, match=f"copy {sha} is missing"):
        volume.verify_copy(sha)


def test_verify_copy_checks_the_size(volume):
    copy = volume.write_copy([b"12345"], SETTINGS)
    with pytest.raises(IntegrityError, match="holds 5 bytes, expected 6"):
        volume.verify_copy(copy.sha256, 6)


def random_chunks(total: int) -> Iterator[bytes]:
    for _ in range(total >> 20):
        yield os.urandom(1 << 20)  # incompressible: each frame's output is as big as its input


def traced_peak(write: Callable[[], StoredCopy]) -> tuple[StoredCopy, int]:
    tracemalloc.start()
    try:
        copy = write()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return copy, peak


def test_memory_stays_flat_whatever_the_size(volume):
    """32 MiB of unknown size streamed in 1 MiB chunks: one frame, compressed by zstd's own
    workers; Python never holds more than a few chunks."""
    total = 32 << 20
    copy, peak = traced_peak(lambda: volume.write_copy(random_chunks(total), SETTINGS))
    assert copy.size == total
    assert peak < 6 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize("threads", [1, 2])
def test_memory_of_a_split_copy_is_bounded_by_its_frames_not_its_size(
    volume: Volume, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """A copy of known size above FRAME_BYTES is compressed a frame per worker: Python holds
    at most `threads` frames compressing, the one filling and their output (buffers reused),
    so 8 and 32 frames both peak below that bound (which 32 frames' output alone exceeds)."""
    frame = 2 << 20
    monkeypatch.setattr(volume_module, "FRAME_BYTES", frame)
    settings = CompressionSettings(level=3, threads=threads)
    peaks = []
    for total in (16 << 20, 64 << 20):
        copy, peak = traced_peak(
            lambda total=total: volume.write_copy(
                random_chunks(total), settings, Expectation(size=total)
            )
        )
        assert copy.size == total
        peaks.append(peak)
    bound = (threads + 1) * frame * 2 + (4 << 20)  # frames in and out, chunks read ahead
    assert max(peaks) < bound < 64 << 20, f"peaks {peaks}, bound {bound}"


# -- nothing partial is ever visible --------------------------------------------------------


class SourceFailed(Exception):
    pass


def failing_after(data: bytes, good_chunks: int, error: BaseException) -> Iterator[bytes]:
    for index, chunk in enumerate(chunks_of(data)):
        if index == good_chunks:
            raise error
        yield chunk


def test_writeback_starts_every_so_many_bytes_over_the_ranges_written(tmp_path, monkeypatch):
    started: list[tuple[int, int]] = []
    real_fadvise = os.posix_fadvise

    def recording_fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        started.append((offset, length))
        real_fadvise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recording_fadvise)
    data = os.urandom(10 << 20)
    path = tmp_path / "copy.part"
    with path.open("wb") as sink:
        writer = WritebackAsYouGo(sink, every=3 << 20)
        for chunk in chunks_of(data, 1 << 20):
            writer.write(chunk)
        writer.flush()

    # each window once as it fills (writeback starts) and once more a window later (dropped)
    assert started == [(0, 3 << 20), (0, 6 << 20), (3 << 20, 6 << 20)]
    assert path.read_bytes() == data  # the tail is left to the caller's fsync


def test_a_large_copy_starts_its_writeback_before_the_final_fsync(volume, monkeypatch):
    started: list[tuple[int, int]] = []
    real_fadvise = os.posix_fadvise
    monkeypatch.setattr(
        os,
        "posix_fadvise",
        lambda fd, offset, length, advice: (
            started.append((offset, length)),
            real_fadvise(fd, offset, length, advice),
        ),
    )
    data = os.urandom(20 << 20)  # incompressible: about 20 MiB written

    copy = volume.write_copy(chunks_of(data, 1 << 20), SETTINGS)

    assert len(started) == 2 and started[0][0] == 0 and started[1][0] == 0  # 8 MiB windows
    assert sum(started[1]) > sum(started[0])
    volume.verify_copy(copy.sha256, len(data))


def test_a_source_failing_midway_leaves_no_copy_and_no_temp_file(volume):
    with pytest.raises(SourceFailed):
        volume.write_copy(failing_after(TEXT, 3, SourceFailed("connection reset")), SETTINGS)
    assert objects_and_tmp(volume) == []
    assert not volume.has_copy(hashlib.sha256(TEXT).hexdigest())


@pytest.mark.parametrize(
    ("expect", "reason"),
    [
        (Expectation(size=len(TEXT) + 1), f"read {len(TEXT)} bytes, expected {len(TEXT) + 1}"),
        (Expectation(size=len(TEXT) - 1), f"longer than the expected {len(TEXT) - 1} bytes"),
        (Expectation(md5_hex="0" * 32), "does not match eTag " + "0" * 32),
    ],
    ids=["short", "long", "md5"],
)
def test_bytes_that_do_not_match_the_expectation_are_never_moved_into_place(volume, expect, reason):
    with pytest.raises(IntegrityError) as raised:
        volume.write_copy(chunks_of(TEXT), SETTINGS, expect)
    assert reason in str(raised.value)
    assert objects_and_tmp(volume) == []


def test_a_matching_md5_and_size_are_accepted(volume):
    expect = Expectation(size=len(TEXT), md5_hex=hashlib.md5(TEXT).hexdigest())
    assert volume.write_copy(chunks_of(TEXT), SETTINGS, expect).size == len(TEXT)


def test_enospc_from_the_volume_becomes_disk_full_and_leaves_nothing(volume):
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(DiskFull, match="is full: No space left on device"):
        volume.write_copy(failing_after(TEXT, 2, full), SETTINGS)
    assert objects_and_tmp(volume) == []


def test_disk_full_is_retryable():
    assert issubclass(DiskFull, RetryableError)


def test_the_free_space_reserve_is_enforced_before_writing(backup_root):
    volume = Volume(backup_root, min_free_bytes=shutil.disk_usage(backup_root).total * 2)
    with pytest.raises(DiskFull, match="reserve"):
        volume.ensure_room(1)


TMPFS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from agent.errors import DiskFull
    from agent.storage.volume import CompressionSettings, Volume

    root = Path(sys.argv[1])
    volume = Volume(root)
    volume.initialise("vol-tmpfs")
    volume.open()
    data = os.urandom(4 << 20)  # incompressible, four times the file system
    result = {}
    try:
        volume.write_copy((data[i : i + 65536] for i in range(0, len(data), 65536)),
                          CompressionSettings(threads=1))
        result["error"] = None
    except DiskFull as exc:
        result["error"] = "DiskFull"
        result["message"] = str(exc)
    result["files"] = sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
    )
    small = volume.write_copy([b"fits"], CompressionSettings(threads=1))
    result["after"] = small.size
    print(json.dumps(result))
    """
)


def test_a_really_full_file_system_raises_disk_full_and_keeps_no_partial_copy(tmp_path):
    """A 1 MiB tmpfs in a private mount namespace (unshare -rm): a real ENOSPC."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare(1) is not installed")
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(TMPFS_SCRIPT)
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$1"', "sh", mount_point],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" "$3" "$1"',
            "sh",
            mount_point,
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["error"] == "DiskFull"
    assert "No space left on device" in result["message"]
    assert result["files"] == [MARKER_NAME]  # no partial copy, no temp file
    assert result["after"] == 4  # the space was given back


# -- the volume marker ----------------------------------------------------------------------


def test_a_root_without_marker_is_refused_with_a_clear_message(backup_root):
    with pytest.raises(VolumeNotReady) as raised:
        Volume(backup_root).open()
    message = str(raised.value)
    assert f"backup root {backup_root} has no {MARKER_NAME} marker" in message
    assert "not mounted or not initialised (run: backup-agent init-volume)" in message
    assert list(backup_root.iterdir()) == []  # nothing was created on the root disk


def test_a_missing_root_is_refused(tmp_path):
    with pytest.raises(VolumeNotReady, match="does not exist or is not a directory"):
        Volume(tmp_path / "unmounted").open()


def test_an_unreadable_marker_is_refused(backup_root):
    (backup_root / MARKER_NAME).write_text("{not json")
    with pytest.raises(VolumeNotReady, match="is unreadable"):
        Volume(backup_root).open()


def test_writes_stop_when_the_volume_loses_its_marker(volume):
    (volume.root / MARKER_NAME).unlink()  # what an unmounted EBS volume looks like
    with pytest.raises(VolumeNotReady, match=r"has no \.backup-agent-volume marker"):
        volume.write_copy([b"data"], SETTINGS)
    assert objects_and_tmp(volume) == []


def test_initialise_is_idempotent_and_keeps_the_first_id(backup_root):
    first = Volume(backup_root).initialise("vol-first")
    again = Volume(backup_root).initialise("vol-second")
    assert again.volume_id == first.volume_id == "vol-first"
    assert json.loads((backup_root / MARKER_NAME).read_text())["volume_id"] == "vol-first"


def test_initialise_generates_an_id_when_none_is_given(backup_root):
    marker = Volume(backup_root).initialise()
    assert marker.volume_id.startswith("vol-")
    assert Volume(backup_root).open() == marker


def test_initialise_refuses_a_missing_root(tmp_path):
    with pytest.raises(VolumeNotReady, match="is not a directory"):
        Volume(tmp_path / "nope").initialise()


def test_open_removes_temp_files_left_by_a_crash(volume):
    for name in ("a" * 32 + ".part", "b" * 32 + ".part"):  # write_copy's names: uuid4 hex
        (volume.tmp_dir / name).write_bytes(b"half a copy")
    marker = volume.open()
    assert marker.volume_id == "vol-test"
    assert list(volume.tmp_dir.iterdir()) == []


# -- no S3 key ever becomes a path ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/etc/passwd", "a" * 63, "A" * 64, "g" * 64, "0" * 63 + "/"],
)
def test_only_sha256_hex_digests_name_copies(volume, name):
    with pytest.raises(ValueError, match="not a SHA-256 hex digest"):
        volume.copy_path(name)


def test_atomic_write_bytes_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "file.json"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(os.listdir(tmp_path)) == ["file.json"]


@pytest.fixture
def fsynced(monkeypatch) -> list[str]:
    """Paths passed to os.fsync, in order (the real fsync still runs)."""
    paths: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    return paths


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_the_copy_is_fsynced_then_its_directory_after_the_rename(volume, fsynced):
    copy = volume.write_copy([b"durable"], SETTINGS)
    temp = [p for p in fsynced if p.startswith(str(volume.tmp_dir))]
    assert len(temp) == 1 and temp[0].endswith(".part")
    assert fsynced.index(temp[0]) < fsynced.index(str(copy.path.parent))
    assert str(volume.objects_dir) in fsynced  # the new objects/ab directory entry


# -- a large object is read and hashed in a thread of its own (issue 19) ---------------------

LARGE = os.urandom(3 << 20) + TEXT * 40  # about 6.6 MiB: above readahead.THREAD_FROM_BYTES


def recording(data: bytes, size: int, readers: list[int]) -> Iterator[bytes]:
    """`data` in chunks of `size`, noting the thread that reads each one."""
    for chunk in chunks_of(data, size):
        readers.append(threading.get_ident())
        yield chunk


def read_ahead_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "read-ahead"]


@pytest.mark.parametrize(
    ("data", "size", "in_a_thread"),
    [
        (TEXT, 1, False),
        (TEXT, len(TEXT), False),
        (LARGE, 1 << 20, True),
        (LARGE, 65_537, True),
        (LARGE, len(LARGE), True),
    ],
    ids=["small-1B", "small-whole", "large-1MiB", "large-odd", "large-whole"],
)
@pytest.mark.parametrize("known_size", [True, False], ids=["size", "no-size"])
def test_the_copy_and_its_checksums_are_the_same_whatever_the_chunking(
    volume, data, size, in_a_thread, known_size
):
    readers: list[int] = []
    expect = Expectation(
        size=len(data) if known_size else None, md5_hex=hashlib.md5(data).hexdigest()
    )

    copy = volume.write_copy(recording(data, size, readers), SETTINGS, expect)

    assert (copy.sha256, copy.size) == (hashlib.sha256(data).hexdigest(), len(data))
    with volume.open_copy(copy.sha256) as reader:
        assert reader.read() == data
    volume.verify_copy(copy.sha256, len(data))
    # an unknown size is read in a thread whatever the object turns out to be
    threaded = in_a_thread or not known_size
    here = threading.get_ident()
    assert len(set(readers)) == 1
    assert (readers[0] == here) is not threaded
    assert read_ahead_threads() == []  # the reader thread has ended when the copy is made


def test_chunkings_of_one_object_make_byte_identical_copies(volume, backup_root):
    first = volume.write_copy(chunks_of(LARGE, 1 << 20), SETTINGS, Expectation(len(LARGE)))
    stored = first.path.read_bytes()
    first.path.unlink()
    second = volume.write_copy(chunks_of(LARGE, 4097), SETTINGS, Expectation(len(LARGE)))
    assert second.sha256 == first.sha256
    assert second.path.read_bytes() == stored


@pytest.mark.parametrize(
    ("expect", "reason"),
    [
        (Expectation(size=len(LARGE) + 1), f"read {len(LARGE)} bytes, expected {len(LARGE) + 1}"),
        (Expectation(size=len(LARGE) - 1), f"longer than the expected {len(LARGE) - 1} bytes"),
        (
            Expectation(size=len(LARGE), md5_hex=hashlib.md5(b"tampered").hexdigest()),
            "does not match eTag",
        ),
    ],
    ids=["short", "long", "md5"],
)
def test_a_large_download_that_does_not_match_is_refused_too(volume, expect, reason):
    """The checks run in the reader thread; their IntegrityError is raised to the caller."""
    with pytest.raises(IntegrityError, match=reason):
        volume.write_copy(chunks_of(LARGE, 1 << 20), SETTINGS, expect)
    assert objects_and_tmp(volume) == []
    assert read_ahead_threads() == []


def test_a_tampered_byte_in_a_large_download_is_refused(volume):
    """The eTag's MD5 is of the bytes S3 holds; one byte changed on the way is caught."""
    tampered = bytearray(LARGE)
    tampered[len(LARGE) // 2] ^= 0x01
    expect = Expectation(size=len(LARGE), md5_hex=hashlib.md5(LARGE).hexdigest())
    with pytest.raises(IntegrityError, match="does not match eTag"):
        volume.write_copy(chunks_of(bytes(tampered), 1 << 20), SETTINGS, expect)
    assert objects_and_tmp(volume) == []


def test_a_large_source_failing_midway_raises_its_own_error_and_leaves_nothing(volume):
    with pytest.raises(SourceFailed, match="connection reset"):
        volume.write_copy(
            failing_after(LARGE, 200, SourceFailed("connection reset")),
            SETTINGS,
            Expectation(size=len(LARGE)),
        )
    assert objects_and_tmp(volume) == []
    assert read_ahead_threads() == []


def test_a_failed_write_stops_the_reader_before_write_copy_returns(volume, monkeypatch):
    """The caller closes the download once write_copy returns: no read may still be running
    or start after that (the reader thread is stopped and joined on the way out).

    96 MiB in frames of 16 MiB, one worker (SETTINGS): the second frame's submit waits for
    the first frame and writes it, so the write fails after ~32 reads plus the read-ahead,
    whatever the timing. (At 32 MiB both frames were read before the first was written
    whenever its compression lost the race: the CI run of 2026-12-01 13:01.)"""
    reads = 0
    noise = os.urandom(1 << 20)  # incompressible

    def source() -> Iterator[bytes]:
        nonlocal reads
        for _ in range(96):
            reads += 1
            yield noise

    def full(self: WritebackAsYouGo, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(WritebackAsYouGo, "write", full)
    with pytest.raises(DiskFull):
        volume.write_copy(source(), SETTINGS, Expectation(size=96 << 20))
    assert read_ahead_threads() == []
    reads_when_returned = reads
    assert reads_when_returned < 64  # stopped early, not read to the end
    assert reads == reads_when_returned
    assert objects_and_tmp(volume) == []


@given(
    data=st.binary(min_size=0, max_size=20_000),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
    known_size=st.booleans(),
    md5=st.booleans(),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_chunking_gives_the_same_digest_size_and_bytes(volume, data, cuts, known_size, md5):
    """Chunk boundaries anywhere (empty chunks too), inline (known small size) or in the reader
    thread (unknown size): the copy is of `data`, named by its SHA-256, and the MD5 check
    passes; the same with one byte more announced is refused."""
    bounds = sorted({0, len(data), *(cut for cut in cuts if cut <= len(data))})
    chunks = [part for a, b in itertools.pairwise(bounds) for part in (data[a:b], b"")]
    expect = Expectation(
        size=len(data) if known_size else None,
        md5_hex=hashlib.md5(data).hexdigest() if md5 else None,
    )
    copy = volume.write_copy(iter(chunks), SETTINGS, expect)
    assert (copy.sha256, copy.size) == (hashlib.sha256(data).hexdigest(), len(data))
    volume.verify_copy(copy.sha256, len(data))
    if known_size:
        with pytest.raises(IntegrityError):
            volume.write_copy(iter(chunks), SETTINGS, Expectation(size=len(data) + 1))
    assert read_ahead_threads() == []


# -- a small copy of a known size: read whole, one compress call, one write (issue 19) ------


def no_streaming(monkeypatch) -> None:
    """Fail the test if the streaming path's machinery is used."""

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the streaming path was taken for a small copy")

    monkeypatch.setattr(volume_module, "_OneFrame", refused)
    monkeypatch.setattr(volume_module, "WritebackAsYouGo", refused)


@pytest.mark.parametrize("size", [0, 1, 4096, volume_module.SMALL_COPY_BYTES])
def test_a_small_copy_of_a_known_size_is_one_frame_with_its_size_and_checksum(
    volume, monkeypatch, size
):
    data = (TEXT * (size // len(TEXT) + 1))[:size]
    no_streaming(monkeypatch)
    expect = Expectation(size=size, md5_hex=hashlib.md5(data).hexdigest())
    copy = volume.write_copy(chunks_of(data, 7000), SETTINGS, expect)
    assert copy.sha256 == hashlib.sha256(data).hexdigest() and copy.size == size
    stored = copy.path.read_bytes()
    assert copy.stored_size == len(stored)
    params = zstandard.get_frame_parameters(stored)
    assert params.has_checksum is True and params.content_size == size
    assert zstandard.ZstdDecompressor().decompress(stored) == data
    volume.verify_copy(copy.sha256, size)
    assert objects_and_tmp(volume) == [f"objects/{copy.sha256[:2]}/{copy.sha256}.zst"]


def test_a_copy_just_above_the_small_size_streams(volume, monkeypatch):
    data = os.urandom(volume_module.SMALL_COPY_BYTES + 1)
    no_streaming(monkeypatch)
    with pytest.raises(AssertionError, match="streaming path"):
        volume.write_copy(chunks_of(data), SETTINGS, Expectation(size=len(data)))


@pytest.mark.parametrize(
    ("expect", "reason"),
    [
        (Expectation(size=len(TEXT) + 1), f"read {len(TEXT)} bytes, expected {len(TEXT) + 1}"),
        (Expectation(size=len(TEXT) - 1), f"longer than the expected {len(TEXT) - 1} bytes"),
        (Expectation(size=len(TEXT), md5_hex="0" * 32), "does not match eTag " + "0" * 32),
    ],
    ids=["short", "long", "md5"],
)
def test_a_small_copy_that_does_not_match_is_never_moved_into_place(
    volume, monkeypatch, expect, reason
):
    no_streaming(monkeypatch)
    with pytest.raises(IntegrityError) as raised:
        volume.write_copy(chunks_of(TEXT), SETTINGS, expect)
    assert reason in str(raised.value)
    assert objects_and_tmp(volume) == []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_a_small_copy_is_fsynced_before_its_rename(volume, fsynced, monkeypatch):
    no_streaming(monkeypatch)
    copy = volume.write_copy([b"durable"], SETTINGS, Expectation(size=7))
    temp = [p for p in fsynced if p.startswith(str(volume.tmp_dir))]
    assert len(temp) == 1 and temp[0].endswith(".part")
    assert fsynced.index(temp[0]) < fsynced.index(str(copy.path.parent))


def test_small_copies_written_from_many_threads_at_once_are_each_whole(volume):
    # one compressor per thread: a shared one would mix frames
    payloads = [os.urandom(64) + TEXT[: 1000 + index] for index in range(64)]
    copies: list[StoredCopy] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def write(part: list[bytes]) -> None:
        barrier.wait()
        try:
            for data in part:
                copies.append(volume.write_copy([data], SETTINGS, Expectation(size=len(data))))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(payloads[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(c.sha256 for c in copies) == sorted(
        hashlib.sha256(p).hexdigest() for p in payloads
    )
    for copy, data in (
        (c, p) for p in payloads for c in copies if c.sha256 == hashlib.sha256(p).hexdigest()
    ):
        assert zstandard.ZstdDecompressor().decompress(copy.path.read_bytes()) == data


# -- the rename's directory fsync left to the committer (issue 19) --------------------------


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name fds")
def test_a_deferred_copy_syncs_its_file_not_its_directory_until_asked(volume, fsynced):
    data = b"deferred " * 3
    (volume.objects_dir / hashlib.sha256(data).hexdigest()[:2]).mkdir()  # not a new prefix
    copy = volume.write_copy([data], SETTINGS, Expectation(size=len(data)), sync_directory=False)
    assert [p for p in fsynced if not p.startswith(str(volume.tmp_dir))] == []
    assert len(fsynced) == 1  # the copy's own bytes, before the rename
    fsynced.clear()
    assert volume.sync_directories() == 1
    assert fsynced == [str(copy.path.parent)]
    assert volume.sync_directories() == 0  # nothing changed since


def test_a_dedup_onto_a_copy_whose_directory_is_not_yet_synced_is_covered(volume, fsynced):
    data = b"shared bytes"
    first = volume.write_copy([data], SETTINGS, Expectation(size=len(data)), sync_directory=False)
    # a second version with the same bytes, recorded inline (no committer)
    second = volume.write_copy([data], SETTINGS, Expectation(size=len(data)))
    assert second.deduplicated and second.path == first.path
    fsynced.clear()
    volume.sync_directories()  # what the inline path runs before its journal line
    assert fsynced == [str(first.path.parent)]


def test_a_failed_directory_sync_keeps_the_directory_for_the_next_one(volume, monkeypatch):
    data = b"x" * 100
    copy = volume.write_copy([data], SETTINGS, Expectation(size=len(data)), sync_directory=False)
    calls: list[Path] = []

    def failing(path: Path) -> None:
        calls.append(path)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(volume_module, "fsync_directory", failing)
    with pytest.raises(OSError, match="Input/output error"):
        volume.sync_directories()
    monkeypatch.setattr(volume_module, "fsync_directory", lambda path: calls.append(path))
    assert volume.sync_directories() == 1
    assert calls == [copy.path.parent, copy.path.parent]


def test_a_sync_under_way_is_waited_for_by_the_next_caller(volume, monkeypatch):
    # the inline path must not pass a sync that has taken the set but not yet fsynced it
    data = b"y" * 100
    volume.write_copy([data], SETTINGS, Expectation(size=len(data)), sync_directory=False)
    entered, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow(path: Path) -> None:
        entered.set()
        assert release.wait(30)
        order.append("synced")

    monkeypatch.setattr(volume_module, "fsync_directory", slow)
    first = threading.Thread(target=volume.sync_directories)
    first.start()
    assert entered.wait(30)
    second = threading.Thread(target=lambda: (volume.sync_directories(), order.append("second")))
    second.start()
    second.join(0.2)  # a bounded look: it must still be waiting (not a synchronisation)
    assert order == []
    release.set()
    first.join(30)
    second.join(30)
    assert order == ["synced", "second"]


def test_a_sync_never_falls_between_a_deferred_rename_and_its_note(volume, monkeypatch):
    """A sync that took the set after the directory was noted but before the rename would
    fsync the directory without the new entry, and the next sync, finding the set empty,
    would let a journal line name a copy whose entry is not durable (the session-8 review).
    The note and the rename are one step for `sync_directories`: here a sync is started
    from inside the rename; the directory must be fsynced after the rename."""
    data = b"z" * 100
    (volume.objects_dir / hashlib.sha256(data).hexdigest()[:2]).mkdir()  # not a new prefix
    events: list[str] = []
    real_rename = os.rename
    racing: list[threading.Thread] = []

    def renaming(source: object, target: object) -> None:
        racing.append(threading.Thread(target=volume.sync_directories))
        racing[0].start()
        racing[0].join(0.2)  # a bounded look: a sync that can run now runs before the rename
        events.append("rename")
        real_rename(source, target)  # type: ignore[arg-type]

    monkeypatch.setattr(volume_module.os, "rename", renaming)
    monkeypatch.setattr(volume_module, "fsync_directory", lambda path: events.append("fsync"))
    volume.write_copy([data], SETTINGS, Expectation(size=len(data)), sync_directory=False)
    racing[0].join(30)
    volume.sync_directories()  # the committer's next batch, before its journal append
    assert "fsync" in events[events.index("rename") :]
