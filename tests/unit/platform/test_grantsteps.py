"""A copy's allowance: grants asked in steps, spent chunk by chunk, never ahead of them."""

from __future__ import annotations

import threading

import pytest

from ferry.platform.grantsteps import ALLOWANCE_CEILING, ASKS, Allowance, Steps
from ferry.testing.clockedbudget import ClockedBudget as Budget

MiB = 1 << 20
CHUNK = 4 * MiB


def copy(budget: Budget, allowance: Allowance, seconds: float, disk: float) -> int:
    """Chunks spent for ``seconds`` of the budget's clock by a copy that moves ``disk``
    bytes a second; bytes moved. Each chunk moves only once its grant is there: the
    allowance returns first."""
    moved = 0
    while budget.now < seconds:
        allowance(CHUNK)
        moved += CHUNK
        assert budget.granted >= moved  # never a byte ahead of its grant
        budget.now += CHUNK / disk
    return moved


@pytest.mark.parametrize("mib_per_second", [256, 1024, 4096])
def test_a_budget_with_room_is_asked_a_few_times_a_second(mib_per_second: int) -> None:
    # Given a budget with room for a copy that moves 1 GiB/s at most
    budget = Budget(mib_per_second * MiB)
    allowance = Allowance(budget.take, CHUNK, clock=budget.clock)
    # When it copies for a minute
    moved = copy(budget, allowance, 60.0, disk=1024 * MiB)
    # Then it asked a few times a second (one ask per chunk: 256 a second at 1 GiB/s),
    # moved at the budget's rate or the disk's, whichever is lower, and left at most one
    # step unspent
    assert budget.asks <= 60 * 2 * ASKS + 20, budget.asks
    expected = min(mib_per_second, 1024) * MiB * 60
    assert 0.9 * expected <= moved <= 1.1 * expected, (moved / MiB / 60, mib_per_second)
    assert allowance.unspent <= ALLOWANCE_CEILING
    assert allowance.asked == moved + allowance.unspent == budget.granted


def test_a_spent_budget_is_asked_one_chunk_at_a_time() -> None:
    # Given a budget far below what the copy could move
    budget = Budget(8 * MiB)
    allowance = Allowance(budget.take, CHUNK, clock=budget.clock)
    # When it copies for a minute
    moved = copy(budget, allowance, 60.0, disk=1024 * MiB)
    # Then it moved at the budget's rate, and its grants, which waited for the clock,
    # came back to one chunk each: nothing is held ahead
    assert 0.9 * 8 * MiB * 60 <= moved <= 1.1 * 8 * MiB * 60
    assert allowance.step == CHUNK and allowance.unspent <= CHUNK
    assert budget.asks >= 0.95 * moved // CHUNK


def test_threads_spend_one_allowance_and_a_large_chunk_asks_for_all_of_it() -> None:
    asked: list[int] = []
    lock = threading.Lock()

    def ask(nbytes: int) -> None:
        with lock:
            asked.append(nbytes)

    allowance = Allowance(ask, CHUNK)
    workers = [
        threading.Thread(target=lambda: [allowance(CHUNK) for _ in range(100)]) for _ in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(asked) == allowance.asked == 400 * CHUNK + allowance.unspent
    assert len(asked) < 100 and max(asked) <= ALLOWANCE_CEILING
    allowance(3 * ALLOWANCE_CEILING)  # more than a step: asked whole
    assert asked[-1] >= 3 * ALLOWANCE_CEILING - ALLOWANCE_CEILING


def test_at_the_floor_a_small_need_asks_for_itself_alone() -> None:
    # Given grants that come at once the first time, then wait (a small budget)
    now = [0.0]
    asked: list[int] = []

    def ask(nbytes: int) -> None:
        now[0] += 0.5 if asked else 0.0
        asked.append(nbytes)

    allowance = Allowance(ask, CHUNK, clock=lambda: now[0])
    # When a copy moves 64 KiB extents
    for _ in range(200):
        allowance(64 * 1024)
    # Then the first ask was for that extent alone (the step at its floor), the second
    # a step ahead (the first came at once), and once grants waited each ask is back to
    # what an extent needs: a small extent under a small budget waits for itself alone
    assert asked[:2] == [64 * 1024, 2 * CHUNK]
    assert allowance.step == CHUNK and set(asked[2:]) == {64 * 1024}
    assert sum(asked) == 200 * 64 * 1024 + allowance.unspent


def test_steps_need_a_positive_floor_and_period() -> None:
    with pytest.raises(ValueError):
        Steps(0)
    with pytest.raises(ValueError):
        Steps(MiB, period=0)
