"""The bus cannot grow without bound: the audit and dead-letter streams have size
and age caps, a lost compare-and-set backs off, and a lost ack is seen."""

from __future__ import annotations

import asyncio
import logging

import msgspec
import pytest

from ferry.bus import Bus, Conflict, TopologySettings, declare, kv, topology
from ferry.bus.job import quietly
from ferry.proto import subjects
from ferry.proto.subjects import Bucket
from ferry.runtime.settings import BusSettings


async def test_event_and_dead_letter_streams_are_capped_by_size_and_age(nats_url: str) -> None:
    # Given settings with small caps, as an operator would set them
    settings = BusSettings(
        events_max_bytes=64 * 1024,
        events_max_age_seconds=3600,
        dead_letters_max_bytes=32 * 1024,
        dead_letters_max_age_seconds=600,
    ).topology()

    # When the topology is declared and more events than the cap are published
    async with await Bus.connect(nats_url, name="bounds", settings=settings) as bus:
        await declare(bus, settings)
        payload = b"x" * 1024
        for n in range(200):
            await bus.js.publish("ferry.evt.test.filler.v1", payload, headers={"n": str(n)})
        events = await bus.js.stream_info(subjects.EVENTS_STREAM)
        letters = await bus.js.stream_info(subjects.DEAD_LETTER_STREAM)

    # Then both streams carry their caps, and the oldest events made room for the newest
    assert events.config.max_bytes == 64 * 1024 and events.config.max_age == 3600
    assert letters.config.max_bytes == 32 * 1024 and letters.config.max_age == 600
    assert events.state.bytes <= 64 * 1024
    assert events.state.first_seq > 1 and events.state.last_seq == 200


async def test_an_existing_uncapped_stream_gets_the_caps(nats_url: str) -> None:
    # Given an events stream declared before caps existed (no max_bytes)
    async with await Bus.connect(nats_url, name="bounds") as bus:
        old = topology.events_stream(TopologySettings())
        old.max_bytes = None
        await bus.js.add_stream(old)

        # When a service declares the topology of today
        await declare(bus, TopologySettings(events_max_bytes=1 << 20))

        # Then the stream was brought under the cap
        info = await bus.js.stream_info(subjects.EVENTS_STREAM)
    assert info.config.max_bytes == 1 << 20


class Counter(msgspec.Struct, frozen=True):
    n: int


async def test_mutate_backs_off_between_lost_compare_and_sets(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a key whose first three updates lose to another writer
    store = bus.kv(Bucket.VMS, Counter)
    await store.create("m1.vm1", Counter(0))
    real_update = store.update
    lost = 0

    async def losing_update(key: str, value: Counter, revision: int) -> int:
        nonlocal lost
        if lost < 3:
            lost += 1
            await real_update(key, Counter(100 + lost), revision)  # the other writer wins
            return await real_update(key, value, revision)  # … so this raises Conflict
        return await real_update(key, value, revision)

    monkeypatch.setattr(store, "update", losing_update)
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(kv.asyncio, "sleep", recorded_sleep)
    monkeypatch.setattr(kv.random, "uniform", lambda low, high: high)  # the jitter's top

    # When the value is mutated
    written = await store.mutate("m1.vm1", lambda c: Counter(c.n + 1))

    # Then it was written on the fourth try, after three waits that grow
    assert written == Counter(104)
    assert len(waits) == 3 and all(w > 0 for w in waits)
    assert waits[0] < waits[1] < waits[2]


def test_backoff_is_capped() -> None:
    assert all(0 <= kv.backoff(n) <= 0.5 for n in range(1, 60))


async def test_a_conflict_that_never_ends_still_ends(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = bus.kv(Bucket.VMS, Counter)
    await store.create("m1.vm2", Counter(0))

    async def always_lose(key: str, value: Counter, revision: int) -> int:
        raise Conflict(Bucket.VMS.value, key, revision, revision + 1)

    monkeypatch.setattr(store, "update", always_lose)
    monkeypatch.setattr(kv, "backoff", lambda attempt: 0.0)
    with pytest.raises(Conflict):
        await store.mutate("m1.vm2", lambda c: Counter(c.n + 1))


async def test_a_failed_ack_is_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    # Given an ack whose reply cannot be sent
    async def failing_ack() -> None:
        raise ConnectionError("connection closed")

    # When it is sent quietly
    with caplog.at_level(logging.DEBUG, logger="ferry.bus"):
        await quietly(failing_ack())

    # Then an operator sees it at warning, with the reason
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warned and "connection closed" in warned[0].getMessage()
