"""How a directory restore spreads its files over threads (issue 19, restore of small files).

A plan of small files runs on at most one thread per CPU, a worker takes a run of files at a
time, and a run that meets an unexpected error leaves no temp file behind. Counted through
the thread that stages each file, never timed.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from agent.restore import restorer as restorer_module
from agent.restore import targets
from agent.restore.restorer import SMALL_FILE_BYTES, Restorer
from agent.restore.targets import DirectoryTarget, Status
from tests.support.stored import placed_plan
from tests.support.tree import files_under

SMALL = b"a small restored file\n" * 8
KEYS = [f"d{i % 3}/f{i:03d}" for i in range(90)]


class Recording(DirectoryTarget):
    """A directory target that notes which thread staged each file."""

    def __init__(self, *args, fail_at: int | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.threads: set[int] = set()
        self.calls = 0
        self.fail_at = fail_at
        self._count = threading.Lock()

    def stage(self, item, on_bytes):
        with self._count:
            self.calls += 1
            call = self.calls
            self.threads.add(threading.get_ident())
        if call == self.fail_at:
            raise RuntimeError("unexpected")  # not a restore failure: the run stops
        return super().stage(item, on_bytes)


def test_a_plan_of_small_files_runs_on_at_most_one_thread_per_cpu(volume, tmp_path):
    target = Recording(volume, tmp_path / "out")
    plan = placed_plan(volume, KEYS, SMALL)

    summary = Restorer(target, workers=8, cpus=2, task_files=1).run(plan)

    assert [r.status for r in summary.results] == [Status.RESTORED] * len(KEYS)
    assert 1 <= len(target.threads) <= 2
    assert files_under(tmp_path / "out") == sorted(KEYS)


@pytest.mark.parametrize(
    ("sizes", "workers", "cpus", "threads"),
    [
        ([4096] * 10, 8, 2, 2),  # small files: one thread per CPU
        ([4096] * 10, 1, 2, 1),  # never more than asked for
        ([SMALL_FILE_BYTES] * 4, 8, 4, 4),  # the bound itself is small
        ([SMALL_FILE_BYTES + 1] * 4, 8, 2, 8),  # larger files: every worker
        ([4096] * 9 + [10 << 20], 8, 2, 8),  # large on average (10 MiB among 4 KiB)
    ],
)
def test_threads_for_a_plan(volume, tmp_path, sizes, workers, cpus, threads):
    plan = placed_plan(volume, [f"k{i}" for i in range(len(sizes))], SMALL)
    items = [
        dataclasses.replace(item, record=dataclasses.replace(item.record, size=size))
        for item, size in zip(plan.items, sizes, strict=True)
    ]
    restorer = Restorer(DirectoryTarget(volume, tmp_path / "out"), workers=workers, cpus=cpus)

    assert restorer.threads_for(items) == threads


def test_files_go_to_workers_in_runs(volume, tmp_path):
    plan = placed_plan(volume, KEYS, SMALL)
    sizes = [item.size for item in plan.items]

    runs = list(restorer_module._runs(plan.items, 32, 1 << 20))

    assert [len(run) for run in runs] == [32, 32, 26]
    assert [item.size for run in runs for item in run] == sizes  # in order, each once
    big = list(restorer_module._runs(plan.items[:3], 32, len(SMALL)))  # each run: one file
    assert [len(run) for run in big] == [1, 1, 1]


def test_an_unexpected_error_in_a_run_leaves_no_temp_file(volume, tmp_path):
    target = Recording(volume, tmp_path / "out", fail_at=40)  # in the second run of 32
    plan = placed_plan(volume, KEYS, SMALL)

    with pytest.raises(RuntimeError, match="unexpected"):
        Restorer(target, workers=2, cpus=2, task_files=32).run(plan)

    assert [name for name in files_under(tmp_path / "out") if ".restore-" in name] == []
    assert files_under(tmp_path / "out") == []  # nothing was committed: the batch failed whole


class Writeback(targets.WritebackAsYouGo):
    used = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        Writeback.used += 1


def test_a_small_file_is_written_to_its_descriptor_a_large_one_with_writeback(
    volume, tmp_path, monkeypatch
):
    monkeypatch.setattr(targets, "WritebackAsYouGo", Writeback)
    # a filesystem without O_DIRECT (with it: test_direct.py's restore test)
    monkeypatch.setattr(targets.DirectWriter, "open", classmethod(lambda cls, fd, *a: None))
    large = b"x" * targets.WRITEBACK_BYTES
    plan = placed_plan(volume, ["small"], SMALL)
    big = placed_plan(volume, ["large"], large)

    Restorer(DirectoryTarget(volume, tmp_path / "out")).run(plan)
    assert Writeback.used == 0
    Restorer(DirectoryTarget(volume, tmp_path / "out")).run(big)
    assert Writeback.used == 1

    assert (tmp_path / "out" / "small").read_bytes() == SMALL
    assert (tmp_path / "out" / "large").read_bytes() == large


def test_a_short_write_is_continued_until_every_byte_is_written(volume, tmp_path, monkeypatch):
    real_write = os.write
    calls = []

    def short(fd: int, data) -> int:  # as a signal or a full pipe may: fewer bytes than asked
        calls.append(len(data))
        return real_write(fd, bytes(data[:7]))

    monkeypatch.setattr(targets.os, "write", short)
    plan = placed_plan(volume, ["short"], SMALL)

    summary = Restorer(DirectoryTarget(volume, tmp_path / "out")).run(plan)

    assert summary.ok and (tmp_path / "out" / "short").read_bytes() == SMALL
    assert len(calls) == -(-len(SMALL) // 7)
