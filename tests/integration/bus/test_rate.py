"""A bandwidth budget shared by several processes: in no window do their grants
together exceed the budget's rate, and a spent window makes movers wait for the next."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from ferry.bus import Bus, TopologySettings
from ferry.bus.rate import SharedRate

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
    # (how close they come to it is measured in bench/budgets, not asserted here)
    total = sum(m.moved for m in movers)
    assert total <= rate * (elapsed + period)
    assert all(m.moved for m in movers), "every mover got a share"
