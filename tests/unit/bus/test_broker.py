"""The in-memory test broker: a router's handlers under the bus library's own rules, no server.

These tests hold the stand-in to the same outcomes as the integration tests
of the real router (tests/integration/bus/test_router.py): if the two ever
disagree, a handler test passing here would mean nothing.
"""

from __future__ import annotations

import asyncio

import pytest

from ferry.bus import Context, PermanentError, Router, TemporaryError
from ferry.bus.middleware import TimeLimit
from ferry.bus.router import DELIVERIES_HEADER, REASON_HEADER
from ferry.proto import volume
from ferry.proto.base import FailureOutcome
from ferry.proto.subjects import Service
from ferry.testing.broker import InMemoryBroker
from ferry.testing.bus import Observed, allocate, allocated


async def test_a_returned_event_is_published_and_the_command_acked() -> None:
    # Given a handler that returns its result
    router = Router(Service.VOLUME)
    observer = Observed()

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        assert ctx.deliveries == 1 and ctx.envelope.type == "volume.allocate_disks.v1"
        return allocated(cmd)

    # When a command is sent
    async with InMemoryBroker(router, observer=observer) as broker:
        done = await broker.send(allocate("vm1"))

    # Then its result was published and the command acked, once
    assert done.settled == "ack" and done.deliveries == 1
    assert done.published == [allocated(allocate("vm1"))]
    assert observer.calls == [("handled", "volume.allocate_disks.v1")]


async def test_a_permanent_error_gives_up_at_once_with_a_dead_letter() -> None:
    # Given a handler that rejects its input for good
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        raise PermanentError("namespace does not exist", ["namespace: nope"])

    # When a command is sent
    async with InMemoryBroker(router) as broker:
        done = await broker.send(allocate("vm1", namespace="nope"))

    # Then it is terminated after one delivery, reported as permanent, and dead-lettered
    assert done.settled == "term" and done.deliveries == 1
    failed = done.failed
    assert isinstance(failed, volume.VolumeFailed)
    assert (failed.outcome, failed.canceled) == (FailureOutcome.PERMANENT, False)
    assert (failed.reason, failed.detail) == ("namespace does not exist", ["namespace: nope"])
    [letter] = done.dead_letters
    assert letter.subject == "ferry.dlq.volume.allocate_disks.m1.vm1"
    assert letter.headers[REASON_HEADER] == "namespace does not exist"
    assert letter.headers[DELIVERIES_HEADER] == "1"


async def test_an_error_is_retried_with_backoff_until_it_gives_up() -> None:
    # Given a handler that always fails unexpectedly
    router = Router(Service.VOLUME)
    observer = Observed()

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        raise RuntimeError("disk controller on fire")

    async with InMemoryBroker(router, max_deliver=3, observer=observer) as broker:
        # When it is delivered the first time
        first = await broker.deliver(allocate("vm1"))
        # Then it is nak'ed with the first backoff step, nothing published
        assert (first.settled, first.delay, first.published) == ("nak", 1.0, [])

        # When it is delivered until the consumer's last allowed delivery
        done = await broker.send(allocate("vm1"))

    # Then it gave up with the outcome gave_up, the reason naming the error
    assert done.settled == "term" and done.deliveries == 3
    failed = done.failed
    assert failed is not None and failed.outcome is FailureOutcome.GAVE_UP
    assert failed.deliveries == 3 and "disk controller on fire" in failed.reason
    assert len(done.dead_letters) == 1
    # And the observer saw what the runtime's metrics count
    assert observer.calls.count(("failed", "error")) == 1 + 2
    assert observer.calls.count(("failed", "exhausted")) == 1
    assert observer.calls.count(("redelivered", "volume.allocate_disks.v1")) == 2


async def test_a_temporary_error_asks_for_its_own_delay() -> None:
    # Given a handler that is not ready the first time
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        if ctx.deliveries == 1:
            raise TemporaryError("PVC not bound yet", delay=7.5)
        return allocated(cmd)

    async with InMemoryBroker(router) as broker:
        # When it is delivered, then redelivered
        first = await broker.deliver(allocate("vm1"))
        second = await broker.deliver(allocate("vm1"), deliveries=2)

    # Then the first was nak'ed with the handler's delay, the second succeeded
    assert (first.settled, first.delay) == ("nak", 7.5)
    assert second.settled == "ack" and [type(m) for m in second.published] == [
        volume.DisksAllocated
    ]


async def test_a_canceled_vms_command_does_not_run() -> None:
    # Given a canceled VM
    router = Router(Service.VOLUME)
    ran: list[str] = []

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        ran.append(cmd.vm)

    async with InMemoryBroker(router) as broker:
        broker.cancel("m1", "vm1")

        # When a command for it and one for another VM arrive
        canceled = await broker.send(allocate("vm1"))
        other = await broker.send(allocate("vm2"))

    # Then only the other ran; the canceled one is reported canceled, not dead-lettered
    assert ran == ["vm2"] and other.settled == "ack"
    failed = canceled.failed
    assert canceled.settled == "term" and failed is not None
    assert (failed.outcome, failed.canceled) == (FailureOutcome.CANCELED, True)
    assert canceled.dead_letters == []


async def test_a_cancel_stops_a_running_handler() -> None:
    # Given a handler that works for a long time
    router = Router(Service.VOLUME)
    started = asyncio.Event()
    saw_cancel: list[bool] = []

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            saw_cancel.append(ctx.canceled.is_set())
            raise

    async with InMemoryBroker(router) as broker:
        running = await broker.start(allocate("vm1"))
        await asyncio.wait_for(started.wait(), 5)

        # When the whole migration is canceled while it runs
        broker.cancel("m1")
        done = await running.settled()

    # Then the handler was cancelled and the command given up as canceled
    assert saw_cancel == [True]
    assert done.failed is not None and done.failed.outcome is FailureOutcome.CANCELED
    assert done.failed.reason == "canceled while running"


async def test_a_command_without_a_handler_is_invalid() -> None:
    # Given a router that handles only AllocateDisks
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        return None

    # When another command of the service arrives
    async with InMemoryBroker(router) as broker:
        done = await broker.send(
            volume.CleanupVolumes(plan="p", migration="m1", vm="vm1", namespace="ns")
        )

    # Then it is given up as permanent, saying there is no handler
    assert done.settled == "term" and done.failed is not None
    assert done.failed.outcome is FailureOutcome.PERMANENT
    assert "no handler" in done.failed.reason


async def test_emitted_progress_comes_before_the_result() -> None:
    # Given a handler that reports progress while it works
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        await ctx.emit(
            volume.DiskProgress(
                plan=cmd.plan, migration=cmd.migration, vm=cmd.vm, disk_id="d", done=1, total=2
            )
        )
        return allocated(cmd)

    # When it runs
    async with InMemoryBroker(router) as broker:
        done = await broker.send(allocate("vm1"))

    # Then progress and result were published in that order
    assert [type(m) for m in done.published] == [volume.DiskProgress, volume.DisksAllocated]


async def test_a_time_limit_stops_a_slow_handler_and_it_is_retried() -> None:
    # Given a router with a time limit and a handler that is slow on its first delivery
    router = Router(Service.VOLUME, middleware=[TimeLimit(0.05)])

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        if ctx.deliveries == 1:
            await asyncio.sleep(5)
        return allocated(cmd)

    # When the command is sent
    async with InMemoryBroker(router) as broker:
        first = await broker.deliver(allocate("vm1"))
        done = await broker.send(allocate("vm1"))

    # Then the slow run was stopped and nak'ed for a retry, which succeeded
    assert (first.settled, first.delay) == ("nak", 1.0)
    assert done.settled == "ack"


async def test_a_result_that_cannot_cross_the_wire_fails_here_too() -> None:
    # Given a handler that returns something that is not a Ferry message
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> object:
        return ["not a message"]

    # When it runs
    async with InMemoryBroker(router) as broker:
        done = await broker.deliver(allocate("vm1"))

    # Then, as with the real router, nothing is published and the command is retried
    assert done.settled == "nak" and done.published == []


def test_the_time_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        TimeLimit(0)
