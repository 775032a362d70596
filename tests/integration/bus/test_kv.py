"""Typed key-value state with compare-and-set."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from ferry.bus import Bus, Conflict, Deleted, Entry, InvalidKey, NotFound, declare
from ferry.proto.subjects import Bucket, vm_key


class VmState(msgspec.Struct, frozen=True):
    phase: str
    steps: int = 0


async def test_two_writers_one_wins_the_other_gets_conflict(bus: Bus) -> None:
    # Given an entry both writers have read at the same revision
    kv = bus.kv(Bucket.VMS, VmState)
    key = vm_key("m1", "web01.example")
    await kv.create(key, VmState(phase="pending"))
    first = await kv.get(key)
    second = await kv.get(key)
    assert first is not None and second is not None and first.revision == second.revision

    # When both update from that revision
    winner = await kv.update(key, VmState(phase="copying"), first.revision)
    with pytest.raises(Conflict) as lost:
        await kv.update(key, VmState(phase="failed"), second.revision)

    # Then the first write stands and the error names bucket, key and both revisions
    current = await kv.get(key)
    assert current == Entry(VmState(phase="copying"), winner, key)
    message = str(lost.value)
    assert Bucket.VMS.value in message and key in message
    assert f"revision {first.revision}" in message and f"revision {winner}" in message
    assert lost.value.current_revision == winner


async def test_create_conflicts_when_the_key_exists(bus: Bus) -> None:
    # Given an existing key
    kv = bus.kv(Bucket.VMS, VmState)
    rev = await kv.create("m1.a", VmState(phase="pending"))

    # When it is created again
    with pytest.raises(Conflict) as err:
        await kv.create("m1.a", VmState(phase="other"))

    # Then the conflict says it expected no entry and found one
    assert "expected no entry" in str(err.value) and f"revision {rev}" in str(err.value)


async def test_mutate_serialises_concurrent_increments(bus: Bus) -> None:
    # Given twenty concurrent increments of one counter
    kv = bus.kv(Bucket.VMS, VmState)

    def bump(state: VmState) -> VmState:
        return msgspec.structs.replace(state, steps=state.steps + 1)

    # When they all mutate at once (each retried on conflict)
    await asyncio.gather(
        *(kv.mutate("m1.counter", bump, create=VmState(phase="x")) for _ in range(20))
    )

    # Then none was lost
    entry = await kv.get("m1.counter")
    assert entry is not None and entry.value.steps == 20


async def test_put_delete_keys_and_missing(bus: Bus) -> None:
    # Given an empty bucket
    kv = bus.kv(Bucket.OBJECTS, VmState)
    assert await kv.keys() == []
    assert await kv.get("plan.nope") is None

    # When two keys are put and one deleted
    await kv.put("plan.a", VmState(phase="a"))
    await kv.put("plan.b", VmState(phase="b"))
    await kv.put("provider.c", VmState(phase="c"))
    await kv.delete("plan.a")

    # Then keys and prefixes reflect it, and a deleted key reads as absent
    assert await kv.keys() == ["plan.b", "provider.c"]
    assert await kv.keys(prefix="plan.") == ["plan.b"]
    assert await kv.get("plan.a") is None
    with pytest.raises(NotFound):
        await kv.mutate("plan.a", lambda s: s)
    with pytest.raises(InvalidKey):
        await kv.put("bad key*", VmState(phase="x"))
    # and a deleted key can be created again
    await kv.create("plan.a", VmState(phase="again"))


async def test_keys_lists_every_key_while_one_is_being_rewritten(bus: Bus) -> None:
    # Given two VMs of a migration, one rewritten again and again (a controller at work),
    # and a key deleted (its marker stays in the stream)
    kv = bus.kv(Bucket.VMS, VmState)
    await kv.put("m1.id-a", VmState(phase="running"))
    await kv.put("m1.id-b", VmState(phase="done"))
    await kv.put("m1.id-c", VmState(phase="gone"))
    await kv.delete("m1.id-c")
    stop = asyncio.Event()

    async def rewrite() -> None:
        step = 0
        while not stop.is_set():
            await kv.put("m1.id-a", VmState(phase="running", steps=step))
            step += 1

    writer = asyncio.create_task(rewrite())
    # When the keys are listed many times meanwhile
    try:
        listed = [await kv.keys("m1.") for _ in range(200)]
    finally:
        stop.set()
        await writer

    # Then every listing has both live keys, once each, and not the deleted one
    # (nats-py's own keys() misses the rewritten key, or lists nothing, a few times in 100)
    assert [keys for keys in listed if keys != ["m1.id-a", "m1.id-b"]] == []


async def test_watch_yields_current_values_then_updates(bus: Bus) -> None:
    # Given two existing entries
    kv = bus.kv(Bucket.VMS, VmState)
    await kv.put("m1.a", VmState(phase="one"))
    await kv.put("m2.b", VmState(phase="other migration"))
    ready = asyncio.Event()
    seen: list[Entry[VmState] | Deleted] = []

    async def watch() -> None:
        async for item in kv.watch("m1.", include_deletes=True, ready=ready):
            seen.append(item)
            if isinstance(item, Deleted):
                return

    task = asyncio.create_task(watch())
    await asyncio.wait_for(ready.wait(), 10)

    # When one entry changes and is then deleted
    await kv.put("m1.a", VmState(phase="two"))
    await kv.delete("m1.a")
    await asyncio.wait_for(task, 10)

    # Then the watcher saw the snapshot, the update and the delete, only under its prefix
    phases = [i.value.phase for i in seen if isinstance(i, Entry)]
    assert phases == ["one", "two"]
    assert isinstance(seen[-1], Deleted) and seen[-1].key == "m1.a"


async def test_reads_and_writes_wait_while_no_stream_answers_for_the_bucket(bus: Bus) -> None:
    # Given a bucket in use whose stream stops answering (in a cluster: its leader lost,
    # the others electing; here: the stream gone, then made again)
    kv = bus.kv(Bucket.OBJECTS, VmState)
    await kv.create("before", VmState(phase="x"))
    await bus.js.delete_stream(f"KV_{Bucket.OBJECTS.value}")

    async def back_in(seconds: float) -> None:
        await asyncio.sleep(seconds)
        await declare(bus, bus.settings, [])

    # When a compare-and-set create and a read come while nothing answers
    returned = asyncio.create_task(back_in(1.0))
    revision = await kv.create("during", VmState(phase="y"))
    # Then each waited for the stream to answer again, and did what it was asked once
    assert (await kv.get("during")) == Entry(VmState(phase="y"), revision, "during")
    await returned
    again = asyncio.create_task(back_in(1.0))
    await bus.js.delete_stream(f"KV_{Bucket.OBJECTS.value}")
    assert await kv.get("during") is None  # made again empty, read once it answered
    await again
