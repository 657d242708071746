"""The large section's CPU timeline (bench/large.py): the CPUs busy in each slice of a run,
from cumulative CPU seconds sampled at uneven moments, so a serial stretch shows."""

from __future__ import annotations

from datetime import UTC, datetime

import psutil
import pytest

from bench.large import CpuTimeline, kernel_threads, logged_seconds


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


def test_shares_name_whose_the_others_were_and_never_count_more_than_them():
    line = timeline([(0.0, 0.0, 0.0), (2.0, 2.0, 1.0)])  # agent 2, endpoint 1 CPU-s
    # (seconds, busy, interrupts, this benchmark, idle): 3.6 busy, so 0.6 CPU-s of others
    line.machine = [(0.0, 10.0, 1.0, 5.0, 50.0), (2.0, 13.6, 1.2, 5.1, 50.4)]
    line.kernel = ({7: 1.0, 8: 2.0}, {7: ("kworker/u4:1+flush-253:0", 1.25), 9: ("new", 0.05)})
    shares = line.shares()
    assert shares.others == pytest.approx(0.6)
    assert (shares.bench, shares.interrupts, shares.idle) == (
        pytest.approx(0.1),
        pytest.approx(0.2),
        pytest.approx(0.4),
    )
    # a thread that ended (8) is not known at the end; one started since (9) counts from 0
    assert shares.kernel == pytest.approx(0.3)
    assert shares.busiest == (("kworker/u4:1+flush-253:0", pytest.approx(0.25)), ("new", 0.05))
    # this benchmark and the kernel's threads; interrupts are partly charged to the agent
    # and the endpoint already (tick accounting), so they are shown, never counted
    assert shares.machine == pytest.approx(0.4)  # 0.1 + 0.3
    assert shares.rest == pytest.approx(0.2)
    assert shares.window == 2.0
    # an interrupt's tick charged to the process it interrupted too: never above `others`
    line.machine = [(0.0, 10.0, 1.0, 5.0, 50.0), (2.0, 13.2, 1.5, 5.1, 50.8)]
    shares = line.shares()
    assert shares.others == pytest.approx(0.2)
    assert shares.machine == pytest.approx(0.2) and shares.rest == pytest.approx(0.0)


def test_within_is_the_cpu_between_two_moments_interpolated():
    line = timeline([(0.0, 0.0, 0.0), (1.0, 0.0, 1.0), (3.0, 4.0, 1.2)])
    line.machine = [(0.0, 0.0, 0.0, 0.0, 0.0), (1.0, 1.1, 0.0, 0.1, 0.9), (3.0, 5.5, 0.0, 0.3, 1.1)]
    window = line.within(0.5, 2.0)
    assert (window.agent, window.endpoint) == (pytest.approx(2.0), pytest.approx(0.6))
    assert window.busy == pytest.approx(3.3 - 0.55)
    assert window.bench == pytest.approx(0.2 - 0.05)
    assert window.idle == pytest.approx(1.0 - 0.45)
    assert window.others == pytest.approx(2.75 - 2.6)


def test_kernel_threads_are_kthreadd_and_its_children():
    threads = kernel_threads()
    if not threads:
        pytest.skip("no kernel threads visible here (not Linux, or a pid namespace)")
    assert all(psutil.Process(pid).ppid() in (0, 2) for pid in list(threads)[:20])


def test_the_run_ends_at_the_log_line_s_own_time_not_when_the_benchmark_saw_it():
    sent = datetime(2026, 12, 2, 11, 54, 5, tzinfo=UTC).timestamp()
    event = {"event": "backup.stored", "timestamp": "2026-12-02T11:54:07.500000Z"}
    assert logged_seconds(event, sent, seen=2.51) == pytest.approx(2.5)
    # unreadable, missing or impossible (after the benchmark saw it): what it saw
    assert logged_seconds({"timestamp": "yesterday"}, sent, seen=2.51) == 2.51
    assert logged_seconds({}, sent, seen=2.51) == 2.51
    assert logged_seconds(event, sent, seen=2.4) == 2.4


def test_the_agent_started_when_it_first_used_half_a_cpu_after_the_endpoint_did():
    # 0-0.1 s: the agent ends its own start-up; 0.1-0.5 s: it waits while the endpoint reads
    # the object (a little CPU for the message); then it works
    samples = [(0.0, 0.0, 0.0), (0.1, 0.08, 0.0), (0.3, 0.09, 0.2), (0.5, 0.1, 0.4)]
    samples += [(0.7, 0.4, 0.45)]
    assert timeline(samples).agent_started() == pytest.approx(0.5)
    assert timeline(samples[:4]).agent_started() is None
