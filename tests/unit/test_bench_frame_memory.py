"""bench/frame_memory.py's `--unpriced` budget: every frame at the base level's price, and
the same calls as the agent's budget (a copy's close passes `unwinding`)."""

from __future__ import annotations

from agent.storage.frame_budget import BASE_LEVEL, FrameBudget
from bench.frame_memory import UnpricedBudget


def test_an_unpriced_budget_grants_a_costly_level_as_many_frames_as_the_base_level() -> None:
    priced, unpriced = FrameBudget(3), UnpricedBudget(3)
    assert priced.grants(19) == 0
    assert unpriced.grants(19) == priced.grants(BASE_LEVEL) == 3
    assert all(unpriced.take(19) for _ in range(3))
    assert not unpriced.take(19)


def test_it_takes_frames_back_as_a_copys_close_gives_them() -> None:
    budget = UnpricedBudget(2)
    assert budget.take(19) and budget.take(19)
    budget.give_back(1, 19, unwinding=None)  # as _ParallelFrames.close calls it
    budget.give_back(1, 19)
    assert budget.held == 0 and budget.held_bytes == 0
