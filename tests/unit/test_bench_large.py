"""The large section's CPU timeline (bench/large.py): the CPUs busy in each slice of a run,
from cumulative CPU seconds sampled at uneven moments, so a serial stretch shows."""

from __future__ import annotations

import psutil
import pytest

from bench.large import CpuTimeline


def timeline(samples: list[tuple[float, float, float]]) -> CpuTimeline:
    line = CpuTimeline(psutil.Process(), None)
    line.samples = samples
    return line


def test_each_slice_is_the_cpu_used_in_it_over_its_length():
    # 0-1 s: the endpoint alone on one CPU (its first byte); 1-3 s: the agent on two CPUs
    samples = [(10.0, 0.0, 0.0), (11.0, 0.0, 1.0), (13.0, 4.0, 1.0)]
    slices = timeline(samples).slices(count=3)
    assert slices == [pytest.approx(s) for s in [(0.0, 1.0), (2.0, 0.0), (2.0, 0.0)]]


def test_a_slice_between_samples_is_interpolated():
    samples = [(0.0, 0.0, 0.0), (0.3, 0.6, 0.0), (1.0, 2.0, 0.0)]  # two CPUs throughout
    assert all(a == pytest.approx(2.0) for a, _ in timeline(samples).slices(count=10))


def test_too_few_samples_give_no_slices():
    assert timeline([(0.0, 0.0, 0.0)]).slices() == []


def test_others_are_the_machine_cpu_the_agent_and_endpoint_did_not_use():
    # 0-1 s: the endpoint on one CPU and someone else on the other; 1-2 s: the agent on one
    # CPU, the other idle
    line = timeline([(0.0, 0.0, 0.0), (1.0, 0.0, 1.0), (2.0, 1.0, 1.0)])
    line.machine = [(0.0, 100.0), (1.0, 102.0), (2.0, 103.0)]
    assert line.others(count=2) == [pytest.approx(1.0), pytest.approx(0.0)]
