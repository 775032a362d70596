"""The active controller keeps its lease through a nats-server restart: only another
replica taking the lease stops it, never a bus that is away for a few seconds."""

from __future__ import annotations

import asyncio

from ferry.bus import Bus, TopologySettings, declare
from ferry.bus.tasks import cancel_and_wait
from ferry.migration_controller.leadership import KEY, Leadership, Lease
from ferry.proto.subjects import Bucket
from ferry.testing.nats import NatsServer


async def test_the_lease_outlives_a_nats_restart(nats_server: NatsServer) -> None:
    # Given an active replica holding a short lease
    settings = TopologySettings()
    async with await Bus.connect(nats_server.url, name="controller", settings=settings) as bus:
        await declare(bus, settings, [])
        lead = Leadership(bus, lease_seconds=0.9, owner="replica-1")
        assert await lead.acquire(asyncio.Event())
        holding = asyncio.create_task(lead.hold())
        try:
            # When the nats-server is killed and comes back only after a renewal's request
            # has timed out (the bus's JetStream timeout is 5 s)
            nats_server.kill()
            await asyncio.sleep(6.5)
            nats_server.restart()
            while not bus.connected:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            # Then the replica still holds the lease and keeps renewing it
            assert not holding.done(), holding.exception()
            entry = await bus.kv(Bucket.LOCKS, Lease).get(KEY)
            assert entry is not None and entry.value.owner == "replica-1"
            first = entry.revision
            await asyncio.sleep(0.7)
            entry = await bus.kv(Bucket.LOCKS, Lease).get(KEY)
            assert entry is not None and entry.revision > first
        finally:
            await cancel_and_wait(holding)  # a single cancel can be lost in nats-py's waits
