"""The audit iterator: ordered, from the start, a time or a sequence; follow or stop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ferry.bus import Bus
from ferry.proto import migration, subjects
from ferry.proto.subjects import Service


def _progress(i: int, mig: str = "m1") -> migration.Progress:
    return migration.Progress(plan="p", migration=mig, vm="v", step="s", done=i, total=9)


async def _done(bus: Bus, **kwargs: object) -> list[int]:
    return [
        m.done
        async for _, m in bus.events(follow=False, **kwargs)  # type: ignore[arg-type]
        if isinstance(m, migration.Progress)
    ]


async def test_stop_at_the_end_from_start_sequence_and_time(bus: Bus) -> None:
    # Given an empty stream, then three events, a pause, and three more
    assert await _done(bus) == []
    acks = await bus.publish_many(_progress(i) for i in range(3))
    await asyncio.sleep(0.05)
    middle = datetime.now(UTC)
    await asyncio.sleep(0.05)
    await bus.publish_many(_progress(i) for i in range(3, 6))

    # When reading without following, from the start, a sequence and a time
    # Then each read stops at the last event and starts where asked
    assert await _done(bus) == [0, 1, 2, 3, 4, 5]
    assert await _done(bus, since=acks[2].sequence) == [2, 3, 4, 5]
    assert await _done(bus, since=middle) == [3, 4, 5]


async def test_filter_by_migration(bus: Bus) -> None:
    # Given events of two migrations
    await bus.publish_many([_progress(1, "m1"), _progress(2, "m2"), _progress(3, "m1")])

    # When one migration's events are read
    only = await _done(bus, subject=subjects.events_of(Service.CONTROLLER, "m1"))

    # Then only its events come back, in order
    assert only == [1, 3]


async def test_follow_sees_new_events(bus: Bus) -> None:
    # Given a follower started on an empty stream
    got: list[int] = []

    async def follow() -> None:
        async for _, m in bus.events():
            if isinstance(m, migration.Progress):
                got.append(m.done)
                if len(got) == 2:
                    return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)

    # When events are published afterwards
    await bus.publish(_progress(7))
    await bus.publish(_progress(8))

    # Then the follower receives them in order
    await asyncio.wait_for(task, 10)
    assert got == [7, 8]
