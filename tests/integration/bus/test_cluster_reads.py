"""In a three-node JetStream cluster, a key written is read back at once from any node.

A write to a replicated bucket is acknowledged once a majority of replicas stored it;
the third may lag. A read any replica may answer (a bucket's direct get) can then say
"no such key" for a key just written: ``ferry migrate`` wrote a Migration, the
controller read it from the lagging replica and rejected it as missing. Reads must go
to the stream's leader whenever there are replicas to disagree.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgspec
import pytest

from ferry.bus import Bus, TopologySettings, declare
from ferry.proto import subjects
from ferry.proto.subjects import Bucket, Service
from ferry.runtime.stack import identities, nats, processes

pytestmark = pytest.mark.timeout(180)

SIZE = 3
WRITES = 200
LANES = 10


class Doc(msgspec.Struct):
    n: int


Connect = Callable[[int, str], Awaitable[Bus]]
SETTINGS = TopologySettings(replicas=SIZE)


@pytest.fixture
async def connect(tmp_path: Path) -> AsyncIterator[Connect]:
    """A cluster of three nodes; connect(n, identity) joins node n as that identity."""
    started = nats.start_cluster(tmp_path, SIZE, 0, 60.0)
    try:
        urls = [f"nats://127.0.0.1:{bound.port}" for _, bound in started]
        who = identities.ensure(nats.identities_dir(tmp_path))

        async def join(node: int, identity: str) -> Bus:
            return await Bus.connect(
                urls[node - 1], name=identity, settings=SETTINGS, credentials=who[identity]
            )

        yield join
    finally:
        processes.stop([proc for proc, _ in started], 10.0)


async def test_a_key_written_through_one_node_is_found_through_every_other(
    connect: Connect,
) -> None:
    # Given buckets declared with three replicas by the controller, the CLI writing
    # through node 1 and services reading through each node, with their own identities
    async with (
        await connect(1, Service.CONTROLLER.value) as controller,
        await connect(1, identities.CLI) as writer,
        await connect(2, Service.VOLUME.value) as second,
        await connect(3, Service.VM.value) as third,
    ):
        await declare(controller, SETTINGS, [Service.CONTROLLER])
        written = writer.kv(Bucket.OBJECTS, Doc)
        readers = [r.kv(Bucket.OBJECTS, Doc) for r in (controller, second, third)]
        # When keys are created one after another, each read at once through every node
        # (by several writers at once, as a migration's many steps write)
        missing: list[tuple[str, int]] = []

        async def write_and_read(lane: int) -> None:
            for n in range(lane, WRITES, LANES):
                key = f"doc.{n}"
                await written.create(key, Doc(n))
                for number, reader in enumerate(readers, 1):
                    got = await reader.get(key)
                    if got is None or got.value.n != n:
                        missing.append((key, number))

        await asyncio.gather(*(write_and_read(lane) for lane in range(LANES)))
        # Then every read found what was written
        assert missing == [], f"{len(missing)} of {WRITES * SIZE} reads missed: {missing[:5]}"
        # And no replicated bucket or stream lets a follower answer a read: direct gets
        # promise no read-your-writes (a lag rarely shows on an idle machine, so the
        # configuration is what this asserts; the reads above prove the identities may
        # read through the leader)
        for name in [f"KV_{b.value}" for b in Bucket] + [subjects.EVENTS_STREAM]:
            info = await controller.js.stream_info(name)
            assert info.config.num_replicas == SIZE
            assert not info.config.allow_direct, f"{name} lets any replica answer a get"


async def test_buckets_made_with_direct_reads_by_an_earlier_version_lose_them(
    connect: Connect,
) -> None:
    # Given a bucket an earlier Ferry made with three replicas and direct reads
    async with await connect(1, Service.CONTROLLER.value) as bus:
        name = Bucket.OBJECTS.value
        await bus.patiently(
            "making the old bucket",
            lambda: bus.js.create_key_value(bucket=name, history=5, replicas=SIZE, direct=True),
            codes=frozenset({10005}),
        )
        # When this version declares the topology
        await declare(bus, SETTINGS, [Service.CONTROLLER])
        # Then its gets go to the leader
        info = await bus.js.stream_info(f"KV_{name}")
        assert info.config.num_replicas == SIZE and not info.config.allow_direct
