"""The write barrier: shared holders exclude the snapshot; the snapshot excludes new copies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from agent.storage.barrier import BarrierTimeout, NoBarrier, WriteBarrier


def test_shared_holders_do_not_exclude_each_other(tmp_path):
    barrier = WriteBarrier(tmp_path)
    with barrier.shared(), barrier.shared():
        pass  # no deadlock: two copies commit at once


def test_exclusive_times_out_while_a_copy_holds_the_room(tmp_path):
    ticks = iter(range(1000))
    barrier = WriteBarrier(tmp_path, monotonic=lambda: float(next(ticks)), sleep=lambda _: None)
    with (
        barrier.shared(),
        pytest.raises(BarrierTimeout, match="critical section"),
        barrier.exclusive(timeout=5),
    ):
        pass
    with barrier.exclusive(timeout=5):  # free again once the copy left
        pass


def test_a_new_copy_waits_at_the_gate_while_the_snapshot_holds_it(tmp_path):
    barrier = WriteBarrier(tmp_path)
    entered = threading.Event()

    def copy():
        with barrier.shared():
            entered.set()

    with barrier.exclusive(timeout=5):
        writer = threading.Thread(target=copy, daemon=True)
        writer.start()
        assert not entered.wait(0.2)  # blocked at the gate while the snapshot holds it
    assert entered.wait(5)
    writer.join(5)


def test_the_barrier_holds_across_processes(tmp_path):
    """`backup-agent snapshot` runs in its own process: the daemon's copies must see it."""
    script = (
        "import sys, time; from pathlib import Path\n"
        "from agent.storage.barrier import WriteBarrier\n"
        "with WriteBarrier(Path(sys.argv[1])).exclusive(5):\n"
        "    print('closed', flush=True); sys.stdin.readline()\n"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = iter(other.stdout.readline, "")
        assert any(line.strip() == "closed" for line in lines)
        ticks = iter(range(1000))
        probe = WriteBarrier(tmp_path, monotonic=lambda: float(next(ticks)), sleep=lambda _: None)
        with pytest.raises(BarrierTimeout, match="new copies"), probe.exclusive(timeout=3):
            pass
    finally:
        other.stdin.write("\n")
        other.stdin.flush()
        other.wait(10)
    started = time.monotonic()
    with WriteBarrier(tmp_path).shared():
        assert time.monotonic() - started < 5


def test_no_barrier_is_free_both_ways():
    gate = NoBarrier()
    with gate.exclusive(), gate.shared():
        pass
