"""A bandwidth budget shared by several processes: in no window do their grants
together exceed the budget's rate, and a spent window makes movers wait for the next."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from ferry.bus import Bus, TopologySettings
from ferry.bus.rate import SharedRate, account, measured, measured_accounts

MiB = 1 << 20


async def test_movers_in_two_connections_share_one_rate(
    bus: Bus, nats_url: str, settings: TopologySettings
) -> None:
    # Given a budget of 8 MiB/s, in windows of 0.25 s, and a second connection (a replica)
    period, rate, slice_ = 0.25, 8 * MiB, 256 * 1024
    async with await Bus.connect(nats_url, name="replica", settings=settings) as other:
        movers = [SharedRate(b, "host-esx1", rate, period=period) for b in (bus, other, bus)]
        grants: Counter[float] = Counter()

        async def move(mover: SharedRate, until: float) -> None:
            while time.monotonic() < until:
                grants[await mover.take(slice_)] += slice_

        # When three movers ask for as much as they can for 1.5 s
        t0 = time.monotonic()
        await asyncio.gather(*(move(m, t0 + 1.5) for m in movers))
        elapsed = time.monotonic() - t0
    # Then no window granted more than the budget's share of it
    assert max(grants.values()) <= rate * period
    # And the movers together moved no more than the budget's rate, not three times it
    # (how close they come to it is measured in bench/budgets, not asserted here): at
    # most the rate over the run, plus the window it began in (granted from that
    # window's start) and the one slice granted at the start of the last window
    total = sum(m.moved for m in movers)
    assert total <= rate * (elapsed + period) + slice_
    assert all(m.moved for m in movers), "every mover got a share"


async def test_slices_larger_than_a_window_still_keep_to_the_rate(bus: Bus) -> None:
    # Given a budget of 2 MiB/s in windows of 0.25 s (512 KiB each) and a copy whose
    # chunks are 1 MiB, twice a window
    period, rate, slice_ = 0.25, 2 * MiB, 1 * MiB
    mover = SharedRate(bus, "host-big-slices", rate, period=period)
    # When it moves four of them
    t0 = time.monotonic()
    for _ in range(4):
        await mover.take(slice_)
    elapsed = time.monotonic() - t0
    # Then they took as long as the rate says, less the window the run began in and
    # the piece granted at the start of the last one (a chunk granted whole in an
    # empty window would move 4 MiB/s here: all four in under 0.8 s)
    assert 4 * slice_ <= rate * elapsed + rate * period + rate * period, elapsed
    assert mover.moved == 4 * slice_


async def test_the_measured_rate_is_every_movers_last_whole_window(bus: Bus) -> None:
    # Given one account of a per-host budget, and movers on a clock the test moves
    now = [100.5]  # half-way: grants keep pace with the clock within a window
    where = account("per-host", "esx1")
    movers = [SharedRate(bus, where, 8 * MiB, clock=lambda: now[0]) for _ in range(2)]
    # When two movers take 3 MiB in the window at 100 s, and one 1 MiB in the next
    await movers[0].take(2 * MiB)
    await movers[1].take(1 * MiB)
    now[0] = 101.2
    await movers[0].take(1 * MiB)
    # Then while the next window runs, the measure is the whole window before it
    assert await measured(bus, where, now=101.5) == 3 * MiB
    # And once that window is over too, it is what that window granted
    assert await measured(bus, where, now=102.5) == 1 * MiB
    # And with nothing granted for a whole window the budget is idle
    assert await measured(bus, where, now=103.1) == 0
    # And a window after an idle one does not count the one before the gap
    now[0] = 104.0
    await movers[1].take(1 * MiB)
    assert await measured(bus, where, now=104.5) == 0
    # And the budget's accounts are found by its name, one per host
    assert await measured_accounts(bus, "per-host") == {"esx1": 0.0}


async def test_copies_sharing_a_budget_get_equal_shares_whatever_their_pace(bus: Bus) -> None:
    # Given a budget of 2 MiB/s and two copies under it: one asks again the moment it
    # is granted, the other spends a while on each slice first (a process starved of
    # CPU), though alone it could still move well over half of the budget
    period, rate, slice_ = 0.25, 2 * MiB, 64 * 1024
    mover = SharedRate(bus, "host-fair", rate, period=period)
    moved: Counter[str] = Counter()

    async def copy(holder: str, work: float, until: float) -> None:
        while time.monotonic() < until:
            await mover.take(slice_, holder)
            moved[holder] += slice_
            await asyncio.sleep(work)

    # When both copy for 2 s
    t0 = time.monotonic()
    await asyncio.gather(copy("eager", 0.0, t0 + 2.0), copy("starved", 0.02, t0 + 2.0))
    # Then each got about half: first come, first served would give the eager copy
    # most of every window (the starved one asks after the eager one took the room)
    assert moved["starved"] >= 0.75 * moved["eager"], moved
