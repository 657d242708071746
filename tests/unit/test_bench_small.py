"""bench/small.py's CPU accounting for section 2 (CPU per object, agent and endpoint)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from agent.aws import Clients
from agent.config import Config
from bench.small import (
    CpuMeter,
    Run,
    SmallObject,
    Spread,
    Totals,
    cpu_per_object,
    round_order,
    round_ratios,
    round_slices,
)
from bench.stack import AgentRun, Setup


def test_cpu_per_object_is_milliseconds_or_a_question_mark():
    assert cpu_per_object(0.5, 100) == "5.0"
    assert cpu_per_object(None, 100) == "?"


def test_the_meter_counts_cpu_spent_after_it_was_made_in_both_processes():
    meter = CpuMeter(os.getpid())  # "the process" is this one too
    data = b"x" * (1 << 20)
    for _ in range(200):  # about 0.1-0.3 s of CPU
        hashlib.sha256(data).digest()
    other, here = meter.used()
    assert other > 0.05 and here > 0.05
    assert CpuMeter(None).used()[0] == 0.0  # no process (an endpoint not started here)


def test_rounds_alternate_which_side_goes_first():
    kinds = ("agent", "held", "loop")
    assert [round_order(i, kinds) for i in range(3)] == [
        ["agent", "held", "loop"],
        ["loop", "held", "agent"],
        ["agent", "held", "loop"],
    ]


def test_round_slices_cover_every_object_once_in_rounds_alike_in_size():
    objects = [SmallObject(f"k{n}", 4096, "e") for n in range(10)]
    parts = round_slices(objects, 3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sorted(o.key for p in parts for o in p) == sorted(o.key for o in objects)


def test_the_ratio_spread_is_the_median_of_the_rounds_and_their_range():
    ratios = round_ratios([40.0, 30.0, 60.0], [40.0, 60.0, 40.0])
    assert ratios == [1.0, 0.5, 1.5]
    spread = Spread.of(ratios)
    assert (spread.median, spread.low, spread.high) == (1.0, 0.5, 1.5)
    assert str(spread) == "1.00x (0.50-1.50)"


def test_totals_sum_the_rounds_and_stay_unknown_once_a_part_is():
    totals = Totals()
    totals.add(Run(4, 100, 2.0, 40.0, 1.0), 1.0, 2.0, 0.1, 150)
    totals.add(Run(4, 300, 4.0, 50.0, 3.0), 3.0, None, 0.3, 450)
    assert totals.rate == 400 / 6.0 and totals.rates == [50.0, 75.0]
    assert totals.mean_outstanding == (100 * 40 + 300 * 50) / 400
    assert totals.own_cpu == 4.0 and totals.endpoint_cpu is None
    assert totals.per_object() == "1.50"


class _Process:
    """An AgentProcess's path only (AgentRun reads its log through it)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path


def test_a_run_is_settled_once_the_encryption_check_has_logged_its_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "agent.log"
    log.write_text(json.dumps({"event": "agent.started"}) + "\n")
    run = AgentRun(_Process(log))  # type: ignore[arg-type]
    started = time.monotonic()
    run.wait_settled(timeout=0.2)  # nothing ended yet: waits out its timeout, and says so
    assert time.monotonic() - started >= 0.2
    assert "start-up check did not end within 0 s" in capsys.readouterr().err
    with log.open("a") as handle:
        handle.write(json.dumps({"event": "volume.encryption_not_checked"}) + "\n")
    started = time.monotonic()
    run.wait_settled(timeout=30)
    assert time.monotonic() - started < 5
    assert capsys.readouterr().err == ""


def test_the_agents_log_is_not_in_the_directory_its_config_watcher_watches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AgentRun, "start", lambda self: None)
    config_path = tmp_path / "config.yaml"
    config = cast(Config, SimpleNamespace(queue=SimpleNamespace(wait_time_seconds=0)))
    setup = Setup("s", config_path, config, cast(Clients, None), tmp_path)
    run = setup.start_agent()
    assert run.process.log_path.parent != config_path.parent
