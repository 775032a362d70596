"""Lanes run by reused workers: order within a lane, parallel lanes, few tasks; ack subjects."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from ferry.bus.consumer import _position
from ferry.bus.lanes import Lanes


async def test_a_lane_runs_in_order_and_lanes_in_parallel() -> None:
    # Given lanes whose items wait on I/O (a sleep), two items on lane "a"
    log: list[str] = []

    async def run(item: str, worker: asyncio.Task[None]) -> None:
        log.append(f"start {item}")
        await asyncio.sleep(0.01)
        log.append(f"end {item}")

    lanes: Lanes[str] = Lanes(run)
    # When they are queued
    for key, item in (("a", "a1"), ("b", "b1"), ("a", "a2"), ("c", "c1")):
        lanes.put(key, item)
    await asyncio.wait_for(lanes.drained(), 5)
    # Then lane a's second item starts only after its first ended, while b and c ran
    # beside a1 (they started before it ended)
    assert log.index("start a2") > log.index("end a1")
    assert log.index("start b1") < log.index("end a1")
    assert log.index("start c1") < log.index("end a1")
    # and one worker per lane running at once was enough
    assert len(lanes.workers) <= 3
    await lanes.close()
    assert not lanes.workers


async def test_lanes_that_do_not_wait_run_in_one_worker_and_workers_are_reused() -> None:
    # Given items that never wait
    seen: list[tuple[int, asyncio.Task[None] | None]] = []

    async def run(item: int, worker: asyncio.Task[None]) -> None:
        seen.append((item, asyncio.current_task()))
        assert worker is asyncio.current_task()  # the task to cancel to interrupt it

    lanes: Lanes[int] = Lanes(run)
    # When two batches of 100 lanes are queued, one after the other
    for batch in range(2):
        for i in range(100):
            lanes.put(f"vm{i}", batch * 100 + i)
        await asyncio.wait_for(lanes.drained(), 5)
    # Then every item ran, in order, in at most two tasks (one called in case the first waits)
    assert [item for item, _ in seen] == list(range(200))
    assert len({task for _, task in seen}) <= 2
    assert len(lanes.workers) <= 2
    await lanes.close()


async def test_a_worker_torn_down_mid_lane_leaves_the_others_working() -> None:
    # Given a lane whose item waits forever, and a worker running it
    gate = asyncio.Event()
    ran: list[str] = []

    async def run(item: str, worker: asyncio.Task[None]) -> None:
        if item == "stuck":
            await asyncio.sleep(3600)
        ran.append(item)
        gate.set()

    lanes: Lanes[str] = Lanes(run)
    lanes.put("x", "stuck")
    await asyncio.sleep(0.01)
    (stuck,) = lanes.workers
    # When that worker is cancelled (as the test broker tears down) and work goes on
    stuck.cancel()
    await asyncio.gather(stuck, return_exceptions=True)
    lanes.put("y", "next")
    await asyncio.wait_for(gate.wait(), 5)
    # Then the other lane still ran, and its lane is gone
    assert ran == ["next"] and "x" not in lanes.queues
    await lanes.close()


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.FERRY_CMD_VOLUME.volume-workers.3.12345.12.1765130000000000000.42",
        "$JS.ACK.dom.ACCHASH.FERRY_CMD_VOLUME.volume-workers.2.777.12.1765130000000000000.4.x",
        "$JS.ACK._.ACCHASH.FERRY_CMD_VOLUME.volume-workers.1.778.12.1765130000000000000.4",
    ],
)
def test_the_stream_sequence_and_deliveries_are_read_as_nats_py_reads_them(reply: str) -> None:
    msg = Msg(None, subject="ferry.cmd.volume.x.m.vm", reply=reply)  # type: ignore[arg-type]
    metadata = msg.metadata
    assert _position(msg) == (metadata.sequence.stream, metadata.num_delivered)


def test_a_message_that_is_not_from_jetstream_has_no_position() -> None:
    assert _position(Msg(None, subject="x", reply="_INBOX.abc")) is None  # type: ignore[arg-type]
    assert _position(Msg(None, subject="x", reply="")) is None  # type: ignore[arg-type]
