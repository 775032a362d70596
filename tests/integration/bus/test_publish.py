"""Publishing: deterministic ids deduplicate, acknowledged events survive kill -9."""

from __future__ import annotations

import asyncio

from ferry.bus import Bus, TopologySettings, declare
from ferry.proto import migration, subjects
from ferry.testing.bus import allocate, stream_count
from ferry.testing.nats import NatsServer


async def test_duplicate_publishes_are_stored_once(bus: Bus) -> None:
    # Given one command
    cmd = allocate("vm1")

    # When it is published three times (a retry after a timeout, a re-run)
    acks = [await bus.publish(cmd) for _ in range(3)]

    # Then the stream holds it once and the later acks say "duplicate"
    assert await stream_count(bus, subjects.command_stream(subjects.Service.VOLUME)) == 1
    assert [a.duplicate for a in acks] == [False, True, True]
    assert len({a.id for a in acks}) == 1
    assert acks[0].id.startswith("volume.allocate_disks.v1:")


async def test_publish_many_keeps_order_and_dedupes(bus: Bus) -> None:
    # Given five distinct events and one repeated
    events = [
        migration.Progress(plan="p", migration="m", vm="v", step="copy", done=i, total=5)
        for i in range(5)
    ]

    # When they are published as a batch that repeats the first
    acks = await bus.publish_many([*events, events[0]])

    # Then five are stored, in order, and the repeat is a duplicate
    assert [a.sequence for a in acks[:5]] == sorted(a.sequence for a in acks[:5])
    assert acks[5].duplicate and acks[5].sequence == acks[0].sequence
    assert await stream_count(bus, subjects.EVENTS_STREAM) == 5
    seen = [m async for _, m in bus.events(follow=False)]
    assert [m.done for m in seen if isinstance(m, migration.Progress)] == [0, 1, 2, 3, 4]


async def test_one_process_events_are_stored_in_the_order_of_their_times(bus: Bus) -> None:
    # Given two tasks of one process, each publishing a batch of events at the same time
    def batch(vm: str) -> list[migration.Progress]:
        return [
            migration.Progress(plan="p", migration="m", vm=vm, step="copy", done=i, total=200)
            for i in range(200)
        ]

    # When both batches go out concurrently on the one connection
    await asyncio.gather(bus.publish_many(batch("a")), bus.publish_many(batch("b")))

    # Then the stream holds them in the order of their envelopes' times
    times = [env.time async for env, _ in bus.events(follow=False)]
    assert len(times) == 400
    assert times == sorted(times)


async def test_cloudevents_headers_on_the_wire(bus: Bus) -> None:
    # Given a published event
    event = migration.VmCompleted(plan="p", migration="m", vm="web01.example", seconds=1.0)
    ack = await bus.publish(event)

    # When the raw stored message is read back
    raw = await bus.js.get_msg(subjects.EVENTS_STREAM, ack.sequence)

    # Then it carries the CloudEvents binary-mode headers and a subject-safe VM token
    headers = raw.headers or {}
    assert headers["ce-type"] == "migration.vm_completed.v1"
    assert headers["ce-source"] == "ferry/test"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-id"] == headers["Nats-Msg-Id"] == ack.id
    assert raw.subject == subjects.event(
        subjects.Service.CONTROLLER, "vm_completed", "m", "web01.example"
    )
    assert "web01.example" not in raw.subject.split(".")


async def test_acknowledged_events_survive_kill_9(
    nats_server: NatsServer, settings: TopologySettings
) -> None:
    # Given N events acknowledged by the stream
    n = 300
    async with await Bus.connect(nats_server.url, name="writer", settings=settings) as bus:
        await declare(bus, settings, [])
        acks = await bus.publish_many(
            migration.Progress(plan="p", migration="m", vm=f"vm{i % 7}", step="s", done=i, total=n)
            for i in range(n)
        )
        assert len({a.sequence for a in acks}) == n

        # When the server is killed with SIGKILL and started again on the same store
        nats_server.kill()
        nats_server.restart()

        # Then the same (reconnected) client sees every acknowledged event
        async def reconnected() -> None:
            while not bus.connected:
                await asyncio.sleep(0.05)

        await asyncio.wait_for(reconnected(), timeout=30)
        info = await bus.js.stream_info(subjects.EVENTS_STREAM)
        assert info.state.messages == n
        done = [
            m.done async for _, m in bus.events(follow=False) if isinstance(m, migration.Progress)
        ]
        assert done == list(range(n))
