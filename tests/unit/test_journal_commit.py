"""The journal's group commit (issue 19): appends that finish together share one fsync,
and an append still returns only once its own line is durable.

Counted through the `fsync` seam, never timed: the first fsync is held until the other
appenders have written their lines (a condition, waited for), so the grouping is certain.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.records import VersionRecord
from agent.storage.journal import Journal

RECORD = VersionRecord(
    bucket="b", key="k", version_token="v:1", order_key="s1", event_name="ObjectCreated:Put",
    event_time="2026-11-01T09:00:00+00:00", backup_time="2026-11-01T09:00:01+00:00",
    volume_id="vol-test", sha256="a" * 64, size=1,
)  # fmt: skip
WAIT = 30  # seconds: only a safety net for a broken build, the conditions decide


def _record(n: int) -> VersionRecord:
    return dataclasses.replace(RECORD, key=f"k{n}", version_token=f"v:{n}")


def _lines(directory: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in directory.glob("*.jsonl"))


def _wait_for(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(WAIT * 100):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met")


class HeldFsync:
    """Holds the first fsync until released; records the file size each fsync made durable."""

    def __init__(self, fail_first: bool = False) -> None:
        self.calls: list[int] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.fail_first = fail_first

    def __call__(self, fd: int) -> None:
        first = not self.calls
        self.calls.append(os.fstat(fd).st_size)
        if first:
            self.entered.set()
            assert self.release.wait(WAIT)
            if self.fail_first:
                raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


def _run_appends(
    journal: Journal, numbers: range, errors: list[BaseException]
) -> list[threading.Thread]:
    def append(n: int) -> None:
        try:
            journal.append(_record(n))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in numbers]
    for thread in threads:
        thread.start()
    return threads


def test_appends_finished_together_share_one_fsync(tmp_path):
    fsync = HeldFsync()
    journal = Journal(tmp_path, fsync=fsync)
    errors: list[BaseException] = []

    [first] = _run_appends(journal, range(1), errors)
    assert fsync.entered.wait(WAIT)  # the first append is fsyncing its line
    others = _run_appends(journal, range(1, 6), errors)
    _wait_for(lambda: _lines(tmp_path) == 6)  # all five wrote while it fsynced
    assert all(t.is_alive() for t in others)  # and none returned before a covering fsync
    fsync.release.set()
    for thread in [first, *others]:
        thread.join(WAIT)

    assert errors == []
    assert len(fsync.calls) == 2  # the first line's, then one for the five
    assert (
        fsync.calls[-1]
        == (tmp_path / next(p.name for p in tmp_path.glob("*.jsonl"))).stat().st_size
    )
    assert len(list(journal.read_all())) == 6


def test_a_lone_append_is_fsynced_before_it_returns(tmp_path):
    calls: list[int] = []
    journal = Journal(tmp_path, fsync=lambda fd: calls.append(os.fstat(fd).st_size))

    position = journal.append(_record(1))

    assert calls == [position.offset]  # the file as far as this line, made durable
    journal.append(_record(2))
    assert len(calls) == 2


def test_a_failed_fsync_fails_every_append_it_covered_and_not_later_ones(tmp_path):
    fsync = HeldFsync(fail_first=True)
    journal = Journal(tmp_path, fsync=fsync)
    errors: list[BaseException] = []

    [first] = _run_appends(journal, range(1), errors)
    assert fsync.entered.wait(WAIT)
    others = _run_appends(journal, range(1, 4), errors)
    _wait_for(lambda: _lines(tmp_path) == 4)
    fsync.release.set()
    for thread in [first, *others]:
        thread.join(WAIT)

    # the first round covered only the first line; the three others had their own round
    assert [type(e) for e in errors] == [OSError]
    journal.append(_record(9))  # a later append is not failed by the old error
    assert len(fsync.calls) == 3


def test_a_round_that_covered_waiting_appends_fails_them_too(tmp_path):
    journal = Journal(tmp_path)
    written = threading.Event()
    proceed = threading.Event()
    errors: list[BaseException] = []

    def failing(fd: int) -> None:
        written.set()
        assert proceed.wait(WAIT)
        raise OSError(errno.EIO, "Input/output error")

    journal._fsync = failing  # type: ignore[method-assign]  # the seam, swapped mid-test
    # Hold the sync lock so that two appends both write before the one round runs.
    with journal._sync_lock:
        threads = _run_appends(journal, range(2), errors)
        _wait_for(lambda: _lines(tmp_path) == 2)
    assert written.wait(WAIT)
    proceed.set()
    for thread in threads:
        thread.join(WAIT)

    assert len(errors) == 2 and all(isinstance(e, OSError) for e in errors)
    assert all("Input/output error" in str(e) for e in errors)


@pytest.mark.parametrize("count", [1, 3])
def test_every_append_reaches_the_file(tmp_path, count):
    journal = Journal(tmp_path)
    for n in range(count):
        journal.append(_record(n))
    assert [r.key for r in journal.read_all()] == [f"k{n}" for n in range(count)]


def test_append_many_writes_a_batch_under_one_fsync_and_returns_each_lines_position(tmp_path):
    calls: list[int] = []
    journal = Journal(tmp_path, fsync=lambda fd: calls.append(os.fstat(fd).st_size))
    journal.append(_record(0))

    positions = journal.append_many([_record(n) for n in range(1, 6)])

    assert len(calls) == 2  # the lone append's, then one for the batch of five
    assert calls[-1] == positions[-1].offset  # the whole batch was on file when fsynced
    segment = tmp_path / positions[0].segment
    data = segment.read_bytes()
    offsets = [p.offset for p in positions]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    for n, position in enumerate(positions, start=1):  # each position ends its own line
        assert data[: position.offset].endswith(b"\n")
        assert f'"key":"k{n}"'.encode() in data[: position.offset]
    assert [r.key for r in journal.read_all()] == [f"k{n}" for n in range(6)]
    assert journal.append_many([]) == []
    assert len(calls) == 2  # nothing to write: no fsync


def test_append_many_fails_whole_when_its_fsync_fails(tmp_path):
    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    journal = Journal(tmp_path, fsync=failing)

    with pytest.raises(OSError, match="Input/output error"):
        journal.append_many([_record(1), _record(2)])
