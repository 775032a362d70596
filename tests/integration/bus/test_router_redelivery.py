"""Redeliveries that are not retries: a starved replica, and deliveries lost with a dead replica.

JetStream redelivers a message whose ack_wait ran out. The router keeps held
messages alive (in-progress acks every ack_wait/3), but a process starved of CPU
for longer than that (a loaded machine) misses them; the message then comes back
to the same replica while its first copy is still being handled, and must not
run a second time. And an events consumer must not stop redelivering an event
because replicas holding it were killed: the VM it advances would wait forever.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from ferry.bus import Bus, Context, Intake, Router, TopologySettings
from ferry.proto import subjects, volume
from ferry.proto.subjects import Service
from ferry.testing.bus import Running, allocate, allocated, eventually, stream_count

VOLUME_QUEUE = subjects.command_stream(Service.VOLUME)


async def test_a_message_redelivered_while_its_replica_was_starved_runs_once(
    bus: Bus, settings: TopologySettings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a handler whose process stalls (the event loop blocked: no in-progress acks)
    # for longer than ack_wait, then finishes its work a little later
    router = Router(Service.VOLUME)
    runs: list[int] = []

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        runs.append(ctx.deliveries)
        if len(runs) == 1:
            time.sleep(settings.ack_wait_seconds + 1.0)  # the stall under test
            await asyncio.sleep(1.0)  # the router fetches meanwhile: the redelivery arrives
        return allocated(cmd)

    # When a command arrives and JetStream redelivers it during the stall
    caplog.set_level(logging.WARNING, logger="ferry.bus.router")
    await bus.publish(allocate("vm1"))
    async with Running(router, bus, fetch_wait=0.1):
        await eventually(lambda: runs != [], what="handler started")

        async def settled() -> bool:
            return await stream_count(bus, VOLUME_QUEUE) == 0

        await eventually(settled, what="command acked")
        await asyncio.sleep(settings.ack_wait_seconds + 0.5)  # room for any further delivery

    # Then the redelivery was recognised and the handler ran once, with one result
    assert runs == [1]
    assert any("not run twice" in r.getMessage() for r in caplog.records)
    results = [m async for _, m in bus.events(follow=False)]
    assert [type(m) for m in results] == [volume.DisksAllocated]


async def test_an_event_held_by_replicas_that_died_is_delivered_again(
    bus: Bus, settings: TopologySettings
) -> None:
    # Given the controller's events consumer, bound once by a router
    durable = "controller-events"
    router = Router(
        Service.CONTROLLER,
        intake=Intake.events(durable=durable, filter_subjects=["ferry.evt.volume.>"]),
    )
    seen: list[int] = []

    @router.handler(volume.DisksAllocated)
    async def on_allocated(evt: volume.DisksAllocated, ctx: Context) -> None:
        seen.append(ctx.deliveries)

    async with Running(router, bus):
        await eventually(lambda: _consumer_exists(bus, durable), what="events consumer bound")

    # When an event is delivered max_deliver times to replicas that die before acking
    await bus.publish(volume.DisksAllocated(plan="p", migration="m1", vm="vm1"))
    sub = await bus.js.pull_subscribe_bind(durable, stream=subjects.EVENTS_STREAM)
    for _ in range(settings.max_deliver):
        got = await sub.fetch(1, timeout=settings.ack_wait_seconds + 3.0)
        assert len(got) == 1  # held, never acked: the replica is gone
    await sub.unsubscribe()

    # Then a replica that starts later still gets it, and handles it
    async with Running(router, bus):
        await eventually(lambda: seen != [], within=settings.ack_wait_seconds + 10.0)
    assert seen == [settings.max_deliver + 1]
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def _consumer_exists(bus: Bus, durable: str) -> bool:
    try:
        await bus.js.consumer_info(subjects.EVENTS_STREAM, durable)
    except Exception:
        return False
    return True
