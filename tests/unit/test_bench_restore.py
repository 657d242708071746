"""bench/restore.py's CPU budget: what the small-file restore target leaves for the run."""

from __future__ import annotations

import pytest

from bench.restore import TARGET_SMALL_RESTORE, cpu_budget


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
