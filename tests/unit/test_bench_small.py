"""bench/small.py's CPU accounting for section 2 (CPU per object, agent and endpoint)."""

from __future__ import annotations

import hashlib
import os

from bench.small import CpuMeter, cpu_per_object


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
