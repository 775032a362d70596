"""A router's shutdown against a real server: work in flight is handed back at once
(nak'ed, no delay) and reaches another router, never left to the ack wait."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ferry.bus import Bus, Context, Router
from ferry.bus import consumer as consumer_module
from ferry.proto import subjects, volume
from ferry.proto.subjects import Service
from ferry.testing.bus import Running, allocate, allocated, eventually, stream_count

VOLUME_QUEUE = subjects.command_stream(Service.VOLUME)


async def _events(bus: Bus) -> list[object]:
    return [m async for _, m in bus.events(follow=False)]


async def _queue_empty(bus: Bus) -> bool:
    return await stream_count(bus, VOLUME_QUEUE) == 0


async def test_graceful_shutdown_hands_in_flight_work_back(patient_bus: Bus) -> None:
    # Given a replica working on a command that takes longer than the shutdown grace
    slow = Router(Service.VOLUME)
    started = asyncio.Event()

    @slow.handler(volume.AllocateDisks)
    async def hold(cmd: volume.AllocateDisks, ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    await patient_bus.publish(allocate("vm1"))
    first = Running(slow, patient_bus, grace_seconds=0.5)
    await asyncio.wait_for(started.wait(), 10)

    # When that replica is asked to stop
    await first.shutdown()

    # Then another replica gets it long before ack_wait (60 s): it was nak'ed
    fast = Router(Service.VOLUME)
    deliveries: list[int] = []

    @fast.handler(volume.AllocateDisks)
    async def finish(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        deliveries.append(ctx.deliveries)
        return allocated(cmd)

    async with Running(fast, patient_bus):
        await eventually(lambda: _queue_empty(patient_bus), within=20)
    assert deliveries == [2]
    assert [type(m) for m in await _events(patient_bus)] == [volume.DisksAllocated]


async def test_graceful_shutdown_lets_short_work_finish(bus: Bus) -> None:
    # Given a handler shorter than the grace period
    router = Router(Service.VOLUME)
    started = asyncio.Event()

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        started.set()
        await asyncio.sleep(0.5)
        return allocated(cmd)

    await bus.publish(allocate("vm1"))
    running = Running(router, bus, grace_seconds=10)
    await asyncio.wait_for(started.wait(), 10)

    # When the router is stopped mid-handler
    await running.shutdown()

    # Then the handler completed and its command was acked
    assert await _queue_empty(bus)
    assert [type(m) for m in await _events(bus)] == [volume.DisksAllocated]


async def test_cancelling_the_run_task_also_hands_work_back(patient_bus: Bus) -> None:
    # Given a router task whose handler is busy
    router = Router(Service.VOLUME)
    started = asyncio.Event()

    @router.handler(volume.AllocateDisks)
    async def hold(cmd: volume.AllocateDisks, ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    await patient_bus.publish(allocate("vm1"))
    task = asyncio.create_task(router.run(patient_bus))
    await asyncio.wait_for(started.wait(), 10)

    # When the task itself is cancelled (no stop event)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)

    # Then the command was nak'ed for immediate redelivery
    again = Router(Service.VOLUME)
    deliveries: list[int] = []

    @again.handler(volume.AllocateDisks)
    async def finish(cmd: volume.AllocateDisks, ctx: Context) -> None:
        deliveries.append(ctx.deliveries)

    async with Running(again, patient_bus):
        await eventually(lambda: _queue_empty(patient_bus), within=20)
    assert deliveries == [2]


async def test_work_handed_back_on_stop_is_not_caught_by_a_pull_request_still_pending(
    patient_bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a router whose last fetch leaves its pull request pending at the server (for
    # 30 s here), as a fetch does that the client gave up on a moment before the server
    # expired it (a loaded machine flushes the request late), and whose handler is busy
    fetch = consumer_module.Consumer._fetch

    async def fetch_leaving_a_request(
        self: consumer_module.Consumer, src: consumer_module.Source, batch: int
    ) -> list[Any]:
        fetched = await fetch(self, src, batch)
        if self.halt.is_set():
            stale = json.dumps({"batch": 1, "expires": 30_000_000_000}).encode()
            await patient_bus.nc.publish(src.sub._nms, stale, reply=src.sub._deliver)
            await patient_bus.nc.flush()
        return fetched

    monkeypatch.setattr(consumer_module.Consumer, "_fetch", fetch_leaving_a_request)
    router = Router(Service.VOLUME)
    started = asyncio.Event()

    @router.handler(volume.AllocateDisks)
    async def hold(cmd: volume.AllocateDisks, ctx: Context) -> None:
        started.set()
        await asyncio.sleep(60)

    await patient_bus.publish(allocate("vm1"))
    task = asyncio.create_task(router.run(patient_bus))
    await asyncio.wait_for(started.wait(), 10)

    # When the router stops and hands the command back
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 20)
    monkeypatch.undo()

    # Then another router gets it at once, not after the pending requests expire (30 s)
    # or the ack wait (60 s)
    again = Router(Service.VOLUME)
    deliveries: list[int] = []

    @again.handler(volume.AllocateDisks)
    async def finish(cmd: volume.AllocateDisks, ctx: Context) -> None:
        deliveries.append(ctx.deliveries)

    async with Running(again, patient_bus):
        await eventually(lambda: _queue_empty(patient_bus), within=20)
    assert deliveries == [2]
