"""A reservation's asks follow how long grants take: few a second whatever the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferry.platform.grantsteps import ASKS, CEILING
from ferry.platform.ratefile import Reservation, write_rate
from ferry.testing.clockedbudget import ClockedBudget as Budget

MiB = 1 << 20


def reserve(
    budget: Budget, seconds: float, pace: Reservation | None = None
) -> tuple[Reservation, list[int]]:
    """Reserve ``budget`` for ``seconds`` more (a fresh reservation with a 1 MiB floor
    unless ``pace``); the reservation and the rates it wrote."""
    pace = pace or Reservation(MiB, 1.0, clock=budget.clock)
    written: list[int] = []
    end = budget.now + seconds
    while budget.now < end:
        nbytes = pace.step
        bits = pace.granted(nbytes, budget.take(nbytes))
        if bits is not None:
            written.append(bits)
    return pace, written


@pytest.mark.parametrize("mib_per_second", [8, 256, 2048])
def test_a_budget_with_room_is_reserved_in_a_few_grants_a_second(mib_per_second: int) -> None:
    # Given a budget nobody else takes from
    rate = mib_per_second * MiB
    budget = Budget(rate)
    # When a conversion reserves it for a minute
    pace, written = reserve(budget, 60.0)
    # Then it asked a few times a second, not once per floor-sized step (fixed 1 MiB
    # steps would be `mib_per_second` asks a second), and once the step has grown the
    # rates it wrote are the budget's on average, each within a grant of it
    assert budget.asks <= 60 * 2 * ASKS + 20, budget.asks
    steady = written[3:]
    mean = sum(steady) / len(steady) / 8
    assert 0.95 * rate <= mean <= 1.05 * rate, (mean / MiB, mib_per_second)
    assert all(0.75 * rate * 8 <= bits <= 1.25 * rate * 8 for bits in steady), (
        [round(b / 8 / MiB) for b in written],
        mib_per_second,
    )
    assert pace.step <= CEILING


def test_a_budget_others_take_from_shrinks_the_step_back_to_the_floor() -> None:
    # Given a reservation whose step grew while the budget had room
    budget = Budget(256 * MiB)
    pace, _ = reserve(budget, 5.0)
    grown = pace.step
    # When other movers take nearly all of the budget
    budget.others = 255 * MiB
    budget.granted = int(budget.now * MiB)  # what it holds now is its share's worth
    _, written = reserve(budget, 120.0, pace)
    # Then its steps shrank to the floor and it wrote its share
    assert grown >= 8 * MiB and pace.step == MiB
    assert 0.5 * MiB * 8 <= written[-1] <= 1.5 * MiB * 8, written[-1] / 8 / MiB


def test_a_period_with_a_grant_out_of_reach_writes_nothing() -> None:
    now = [0.0]
    pace = Reservation(MiB, 1.0, clock=lambda: now[0])
    now[0] = 0.9
    assert pace.granted(MiB, 0.9) is None
    pace.unreachable()  # at 0.9 s: the period starts again from here
    now[0] = 1.5
    assert pace.granted(MiB, 0.6) is None
    now[0] = 2.0
    assert pace.granted(MiB, 0.5) == int(2 * MiB * 8 / 1.1)


def test_bad_steps_are_refused_and_the_file_is_replaced_whole(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Reservation(0, 1.0)
    rate = tmp_path / "rate"
    write_rate(rate, 0)
    assert rate.read_text() == "1\n" and not (tmp_path / "rate.new").exists()
