"""bench/restore.py's CPU budget (what the small-file restore target leaves for the run)
and its durable reference (`zstd -d`, then the output flushed)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import pytest
import structlog
import zstandard

from agent.records import VersionRecord
from agent.restore.durable import Barriers
from agent.storage.journal import Journal
from agent.storage.volume import Volume
from bench.restore import (
    TARGET_SMALL_RESTORE,
    Copy,
    JournalRead,
    Timing,
    cpu_budget,
    journal_read,
    least_time,
    median_timing,
    phases,
    run_rounds,
    zstd_decompress_durable,
)


def test_the_budget_is_every_cpu_for_the_time_the_ratio_allows() -> None:
    # zstd -d --filelist took 1.1 s: at 0.33x the restore may take 3.33 s, on 2 CPUs 6.67 CPU-s
    assert cpu_budget(1.1, 0.33, 2) == pytest.approx(6.6667, abs=1e-3)
    assert cpu_budget(1.1, 0.33, 1) == pytest.approx(3.3333, abs=1e-3)


def test_a_higher_ratio_leaves_less() -> None:
    assert cpu_budget(1.0, 0.5, 2) < cpu_budget(1.0, TARGET_SMALL_RESTORE, 2)


@pytest.mark.parametrize(
    ("seconds", "ratio", "cpus"), [(0.0, 0.33, 2), (1.0, 0.0, 2), (1.0, 0.33, 0)]
)
def test_a_budget_needs_positive_inputs(seconds: float, ratio: float, cpus: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        cpu_budget(seconds, ratio, cpus)


def test_the_least_time_is_the_start_then_the_rest_of_the_cpu_on_every_cpu() -> None:
    # session 14's run: started in 0.37 s, 1.80 CPU-s in all: 0.37 + 1.43 / 2
    assert least_time(0.37, 1.80, 2) == pytest.approx(1.085)
    assert least_time(0.37, 1.80, 1) == pytest.approx(1.80)  # one CPU: all of it, in turn


def test_a_run_that_used_no_more_cpu_than_its_start_takes_its_start() -> None:
    assert least_time(0.4, 0.3, 2) == pytest.approx(0.4)


def test_work_that_must_come_first_is_added_whole_and_only_the_rest_is_shared() -> None:
    # started in 0.3 s, then 0.2 s of journal read on one CPU, 1.3 CPU-s in all: 0.3 + 0.2
    # + 0.8 / 2
    assert least_time(0.3, 1.3, 2, serial=0.2) == pytest.approx(0.9)
    # the same read split (0.15 s at best) frees only the CPU the run spent on it (0.2)
    assert least_time(0.3, 1.3, 2, serial=0.15, serial_cpu=0.2) == pytest.approx(0.85)
    assert least_time(0.3, 1.3, 2, serial=0.2) > least_time(0.3, 1.3, 2)


@pytest.mark.parametrize(
    ("start", "cpu", "cpus", "serial"),
    [(0.1, 1.0, 0, 0.0), (-0.1, 1.0, 2, 0.0), (0.1, -1.0, 2, 0.0), (0.1, 1.0, 2, -0.1)],
)
def test_the_least_time_needs_a_cpu_and_no_negative_time(
    start: float, cpu: float, cpus: int, serial: float
) -> None:
    with pytest.raises(ValueError, match="least_time"):
        least_time(start, cpu, cpus, serial)


def test_a_read_is_split_only_where_handing_its_records_back_costs_less() -> None:
    # session 15: read 0.145 s, pickle 0.05, unpickle 0.055 (10,000 records)
    measured = JournalRead(10_000, read=0.145, pickle=0.05, unpickle=0.055)
    assert measured.serial(2) == pytest.approx(0.145)  # split: 0.0975 + 0.055 = 0.1525
    assert measured.serial(1) == pytest.approx(0.145)
    cheap = JournalRead(10_000, read=0.2, pickle=0.02, unpickle=0.01)
    assert cheap.serial(2) == pytest.approx(0.12)  # (0.2 + 0.02) / 2 + 0.01
    with pytest.raises(ValueError, match="CPU"):
        cheap.serial(0)


def test_the_journal_read_measures_every_record_of_the_journal(tmp_path: Path) -> None:
    directory = Volume(tmp_path).journal_dir
    directory.mkdir()
    journal = Journal(directory)
    for number in range(50):
        sha = hashlib.sha256(str(number).encode()).hexdigest()
        journal.append(
            VersionRecord(
                bucket="bench-small",
                key=f"small/{number:05d}.json",
                version_token="etag:" + sha[:32],
                order_key="0",
                event_name="ObjectCreated:Put",
                event_time="2026-12-01T00:00:00.000Z",
                backup_time="2026-12-01T00:00:01+00:00",
                volume_id="vol-1",
                sha256=sha,
                size=1,
            )
        )
    measured = journal_read(directory, runs=2)
    assert measured.records == 50
    assert min(measured.read, measured.pickle, measured.unpickle) >= 0


def _stored(volume: Volume, bodies: list[bytes]) -> list[Copy]:
    copies = []
    for body in bodies:
        sha256 = hashlib.sha256(body).hexdigest()
        path = volume.copy_path(sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(zstandard.ZstdCompressor().compress(body))
        copies.append(Copy(sha256, len(body)))
    return copies


def _flushes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str]]]:
    """Each flush of the reference: what it flushed and the files there at that moment."""
    seen: list[tuple[str, list[str]]] = []

    def listing(fd: int) -> list[str]:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        return sorted(p.name for p in (path.iterdir() if path.is_dir() else [path]))

    real_fsync = os.fsync
    monkeypatch.setattr(
        Barriers, "sync_filesystem", lambda _, fd: seen.append(("syncfs", listing(fd)))
    )
    monkeypatch.setattr(
        os, "fsync", lambda fd: (seen.append(("fsync", listing(fd))), real_fsync(fd))
    )
    return seen


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command")
def test_the_durable_reference_syncs_the_filesystem_once_after_every_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = Volume(tmp_path / "volume")
    bodies = [f"file {n}".encode() * (n + 1) for n in range(5)]
    copies = _stored(volume, bodies)
    flushes = _flushes(monkeypatch)

    zstd_decompress_durable(volume, copies, tmp_path / "out")

    assert flushes == [("syncfs", sorted(c.sha256 for c in copies))]  # once, all written
    assert sorted((tmp_path / "out").iterdir()) == sorted(
        tmp_path / "out" / c.sha256 for c in copies
    )
    for copy, body in zip(copies, bodies, strict=True):
        assert (tmp_path / "out" / copy.sha256).read_bytes() == body


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd command")
def test_for_one_copy_the_durable_reference_fsyncs_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = Volume(tmp_path / "volume")
    [copy] = _stored(volume, [b"one large copy"])
    flushes = _flushes(monkeypatch)

    zstd_decompress_durable(volume, [copy], tmp_path / "out")

    assert flushes == [("fsync", ["00000"])]
    assert (tmp_path / "out" / "00000").read_bytes() == b"one large copy"


def test_the_median_timing_takes_each_figure_s_own_median() -> None:
    runs = [Timing(3.0, 1.0), Timing(1.0, 5.0), Timing(2.0, 2.0)]
    assert median_timing(runs) == Timing(2.0, 2.0)
    assert median_timing(runs[:2]) == Timing(2.0, 3.0)
    with pytest.raises(ValueError, match="at least one"):
        median_timing([])


def _log_line(event: str, **fields: object) -> bytes:
    """A line as `backup-restore` writes it: agent/logs.py's time stamp and JSON renderer."""
    stamped = structlog.processors.TimeStamper(fmt="iso", utc=True)(
        None, "info", {"event": event, **fields}
    )
    rendered = structlog.processors.JSONRenderer()(None, "info", stamped)
    assert isinstance(rendered, str)
    return rendered.encode()


def test_the_phases_come_from_the_restore_s_own_log_lines() -> None:
    started = time.time()
    lines = [_log_line("config.loaded"), b"not json", _log_line("restore.started", files=2)]
    time.sleep(0.02)
    lines += [_log_line("restore.finished", files=2), _log_line("audit.recorded")]
    first_file, files = phases(b"\n".join(lines), started)
    assert first_file is not None and files is not None
    assert 0 <= first_file < 1
    assert 0.015 <= files < 1  # slept 0.02 s between the two lines
    assert first_file + files <= time.time() - started


def test_phases_missing_from_the_log_are_none() -> None:
    started = time.time()
    assert phases(b"", started) == (None, None)
    first_file, files = phases(_log_line("restore.started"), started)
    assert first_file is not None and files is None
    assert phases(b"restore.started restore.finished", started) == (None, None)


def test_the_median_timing_takes_the_phases_it_has() -> None:
    runs = [Timing(3.0, 1.0, 0.7, 2.0), Timing(1.0, 5.0, 0.5, None), Timing(2.0, 2.0)]
    assert median_timing(runs) == Timing(2.0, 2.0, 0.6, 2.0)
    assert median_timing(runs[2:]) == Timing(2.0, 2.0, None, None)


def test_the_rounds_keep_every_runs_files(tmp_path) -> None:
    """No run's files are removed (a removal of thousands of files made the next creates
    scan recently freed inodes, run_rounds): each run writes into a directory of its own,
    the order is reversed every other round, and every run's files are still there after
    the last (the benchmark's working directory goes at its end)."""
    seen: list[tuple[str, list[str]]] = []
    readied: list[str] = []

    def run(kind: str):
        def write(out: Path) -> Timing:
            seen.append((kind, sorted(p.name for p in (tmp_path / "rounds").glob("*"))))
            out.mkdir(parents=True)
            (out / "file").write_bytes(b"x")
            return Timing(1.0, 0.5)

        return write

    rounds = run_rounds(
        {"a": run("a"), "b": run("b")}, 3, tmp_path / "rounds", before=readied.append
    )

    assert readied == ["a", "b", "b", "a", "a", "b"]
    assert seen == [
        ("a", []),
        ("b", ["a-0"]),
        ("b", ["a-0", "b-0"]),
        ("a", ["a-0", "b-0", "b-1"]),
        ("a", ["a-0", "a-1", "b-0", "b-1"]),
        ("b", ["a-0", "a-1", "a-2", "b-0", "b-1"]),
    ]
    assert [sorted(r) for r in rounds] == [["a", "b"]] * 3
    assert sorted(p.name for p in (tmp_path / "rounds").glob("*")) == [
        "a-0",
        "a-1",
        "a-2",
        "b-0",
        "b-1",
        "b-2",
    ]


def test_the_rounds_remove_their_files_when_a_run_fails(tmp_path) -> None:
    def fails(out: Path) -> Timing:
        out.mkdir(parents=True)
        raise RuntimeError("a run failed")

    with pytest.raises(RuntimeError, match="a run failed"):
        run_rounds({"a": fails}, 2, tmp_path / "rounds", before=lambda _kind: None)
    assert not (tmp_path / "rounds").exists()
