"""The dispatch loop against a real server: outcomes, retries, order, cancel, shutdown."""

from __future__ import annotations

import asyncio
import time

from ferry.bus import Bus, Context, Intake, PermanentError, Router, TemporaryError, cancellation
from ferry.bus.router import DELIVERIES_HEADER, REASON_HEADER
from ferry.proto import migration, subjects, volume
from ferry.proto.subjects import Service
from ferry.testing.bus import Observed, Running, allocate, allocated, eventually, stream_count

VOLUME_QUEUE = subjects.command_stream(Service.VOLUME)


async def _events(bus: Bus) -> list[object]:
    return [m async for _, m in bus.events(follow=False)]


async def _queue_empty(bus: Bus) -> bool:
    return await stream_count(bus, VOLUME_QUEUE) == 0


async def test_result_is_published_then_command_acked(bus: Bus) -> None:
    # Given a handler that returns its result event
    router = Router(Service.VOLUME)
    observer = Observed()

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        assert ctx.deliveries == 1 and ctx.envelope.type == "volume.allocate_disks.v1"
        return allocated(cmd)

    # When a command arrives
    await bus.publish(allocate("vm1"))
    async with Running(router, bus, observer=observer):
        await eventually(lambda: _queue_empty(bus), what="command acked")

    # Then the result is on the events stream and the observer counted it
    assert [type(m) for m in await _events(bus)] == [volume.DisksAllocated]
    assert observer.calls == [("handled", "volume.allocate_disks.v1")]


async def test_poison_message_is_dead_lettered_and_does_not_block_others(bus: Bus) -> None:
    # Given a handler that always fails for one VM and works for the others
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        if cmd.vm == "poison":
            raise RuntimeError("disk controller on fire")
        return allocated(cmd)

    # When the poison command and ten healthy ones arrive
    await bus.publish(allocate("poison"))
    await bus.publish_many(allocate(f"ok{i}") for i in range(10))
    observer = Observed()
    async with Running(router, bus, concurrency=2, observer=observer):
        await eventually(lambda: _queue_empty(bus), within=60, what="queue drained")

    # Then every healthy VM completed, the poison one failed after max_deliver deliveries
    events = await _events(bus)
    done = sorted(m.vm for m in events if isinstance(m, volume.DisksAllocated))
    assert done == sorted(f"ok{i}" for i in range(10))
    failed = [m for m in events if isinstance(m, volume.VolumeFailed)]
    assert len(failed) == 1
    assert failed[0].vm == "poison" and failed[0].deliveries == bus.settings.max_deliver
    assert failed[0].command_type == "volume.allocate_disks.v1" and not failed[0].canceled
    assert "disk controller on fire" in failed[0].reason
    # and a copy sits on the dead-letter subject with the original headers and the reason
    dlq = await bus.js.get_last_msg(
        subjects.DEAD_LETTER_STREAM,
        subjects.dead_letter(Service.VOLUME, "allocate_disks", "m1", "poison"),
    )
    headers = dlq.headers or {}
    assert headers["ce-type"] == "volume.allocate_disks.v1"
    assert "disk controller on fire" in headers[REASON_HEADER]
    assert headers[DELIVERIES_HEADER] == str(bus.settings.max_deliver)
    assert dlq.data == (await _raw_command(allocate("poison")))
    # and the observer saw the retries, the give-up and a bounded number in flight
    max_deliver = bus.settings.max_deliver
    assert observer.calls.count(("failed", "error")) == max_deliver - 1
    assert observer.calls.count(("failed", "exhausted")) == 1
    assert observer.calls.count(("redelivered", "volume.allocate_disks.v1")) == max_deliver - 1
    assert observer.calls.count(("handled", "volume.allocate_disks.v1")) == 10
    assert 1 <= observer.max_in_flight <= 2


async def _raw_command(cmd: volume.AllocateDisks) -> bytes:
    from ferry.proto import envelope

    return envelope.encode(cmd)


async def test_permanent_error_is_not_retried(bus: Bus) -> None:
    # Given a handler that rejects its input for good
    router = Router(Service.VOLUME)
    calls = 0

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("namespace does not exist", ["namespace: nope"])

    # When a command arrives
    await bus.publish(allocate("vm1", namespace="nope"))
    async with Running(router, bus):
        await eventually(lambda: _queue_empty(bus))

    # Then it ran once and the Failed event carries reason and detail
    assert calls == 1
    failed = [m for m in await _events(bus) if isinstance(m, volume.VolumeFailed)]
    assert [(f.reason, f.detail, f.deliveries) for f in failed] == [
        ("namespace does not exist", ["namespace: nope"], 1)
    ]
    assert await stream_count(bus, subjects.DEAD_LETTER_STREAM) == 1


async def test_temporary_error_is_redelivered_after_its_delay(bus: Bus) -> None:
    # Given a handler that is not ready the first time
    router = Router(Service.VOLUME)
    seen: list[tuple[int, float]] = []

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        seen.append((ctx.deliveries, time.monotonic()))
        if ctx.deliveries == 1:
            raise TemporaryError("PVC not bound yet", delay=1.5)
        return allocated(cmd)

    # When the command runs
    await bus.publish(allocate("vm1"))
    async with Running(router, bus):
        await eventually(lambda: _queue_empty(bus))

    # Then the second delivery came no earlier than the requested delay, and succeeded
    assert [d for d, _ in seen] == [1, 2]
    assert seen[1][1] - seen[0][1] >= 1.4
    assert [type(m) for m in await _events(bus)] == [volume.DisksAllocated]


async def test_in_progress_acks_keep_a_long_handler_alive(bus: Bus) -> None:
    # Given ack_wait 2 s and a handler that works for 8 s (4x ack_wait)
    assert bus.settings.ack_wait_seconds == 2.0
    router = Router(Service.VOLUME)
    deliveries: list[int] = []

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        deliveries.append(ctx.deliveries)
        await asyncio.sleep(8)
        return allocated(cmd)

    # When it runs (with spare slots, so a redelivery would be picked up at once)
    await bus.publish(allocate("vm-long"))
    async with Running(router, bus, concurrency=4):
        await eventually(lambda: _queue_empty(bus), within=30)

    # Then it was delivered exactly once
    assert deliveries == [1]
    info = await bus.js.consumer_info(VOLUME_QUEUE, subjects.command_consumer(Service.VOLUME))
    assert info.num_redelivered == 0


async def test_order_per_vm_parallel_across_vms_bounded(bus: Bus) -> None:
    # Given a handler that records when each command ran
    router = Router(Service.VOLUME)
    log: list[tuple[str, str, str]] = []
    running = 0
    most = 0

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        log.append(("start", cmd.vm, cmd.namespace))
        await asyncio.sleep(0.15)
        log.append(("end", cmd.vm, cmd.namespace))
        running -= 1

    # When four commands for each of three VMs arrive, interleaved
    await bus.publish_many(
        allocate(vm, namespace=f"n{i}") for i in range(4) for vm in ("a", "b", "c")
    )
    async with Running(router, bus, concurrency=2):
        await eventually(lambda: _queue_empty(bus), within=60)

    # Then each VM's commands ran one at a time in publish order
    for vm in ("a", "b", "c"):
        mine = [(kind, ns) for kind, v, ns in log if v == vm]
        assert mine == [(k, f"n{i}") for i in range(4) for k in ("start", "end")]
    # and different VMs ran at the same time, never more than the concurrency bound
    assert most == 2


async def test_cancel_stops_a_running_handler_and_skips_queued_work(bus: Bus) -> None:
    # Given a long handler running for vm1 with a second command for vm1 queued behind it
    router = Router(Service.VOLUME)
    started = asyncio.Event()
    ran: list[str] = []
    was_cancelled = asyncio.Event()

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        ran.append(f"{cmd.vm}/{cmd.namespace}")
        if cmd.vm == "vm1":
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                assert ctx.canceled.is_set()
                was_cancelled.set()
                raise
        return allocated(cmd)

    await bus.publish(allocate("vm1", namespace="first"))
    await bus.publish(allocate("vm1", namespace="second"))
    await bus.publish(allocate("vm2"))
    async with Running(router, bus, concurrency=4):
        await asyncio.wait_for(started.wait(), 10)

        # When vm1 of migration m1 is canceled
        await cancellation.request(bus, "m1", "vm1", reason="user said so")

        # Then the running handler is cancelled and both vm1 commands end as canceled
        await asyncio.wait_for(was_cancelled.wait(), 10)
        await eventually(lambda: _queue_empty(bus))

    assert ran == ["vm1/first", "vm2/ns"] or ran == ["vm2/ns", "vm1/first"]
    events = await _events(bus)
    failed = [m for m in events if isinstance(m, volume.VolumeFailed)]
    assert len(failed) == 2 and all(f.canceled and f.vm == "vm1" for f in failed)
    assert [m.vm for m in events if isinstance(m, volume.DisksAllocated)] == ["vm2"]
    # canceled work is not dead-lettered
    assert await stream_count(bus, subjects.DEAD_LETTER_STREAM) == 0


async def test_undecodable_and_unhandled_commands_are_dead_lettered(bus: Bus) -> None:
    # Given a router that handles only AllocateDisks
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        return None

    # When a command it has no handler for and a garbage message arrive
    await bus.publish(volume.CleanupVolumes(plan="p", migration="m1", vm="vm1", namespace="ns"))
    await bus.nc.publish("ferry.cmd.volume.allocate_disks.m1.vm2", b"{not json")
    async with Running(router, bus):
        await eventually(lambda: _queue_empty(bus))

    # Then both are terminated and dead-lettered with a reason, nothing is lost
    assert await stream_count(bus, subjects.DEAD_LETTER_STREAM) == 2
    failed = [m for m in await _events(bus) if isinstance(m, volume.VolumeFailed)]
    assert [f.command_type for f in failed] == ["volume.cleanup.v1"]
    assert "no handler" in failed[0].reason


async def test_events_intake_feeds_the_controller(bus: Bus) -> None:
    # Given a controller router that reacts to the volume service's events
    router = Router(
        Service.CONTROLLER,
        intake=Intake.events(durable="controller-events", filter_subjects=["ferry.evt.volume.>"]),
    )
    seen: list[str] = []

    @router.handler(volume.DisksAllocated)
    async def on_allocated(evt: volume.DisksAllocated, ctx: Context) -> migration.StepCompleted:
        seen.append(evt.vm)
        return migration.StepCompleted(
            plan=evt.plan, migration=evt.migration, vm=evt.vm, step="alloc"
        )

    # When the volume service publishes an event it handles and one it does not
    await bus.publish(volume.DisksAllocated(plan="p", migration="m1", vm="vm1"))
    await bus.publish(
        volume.DiskProgress(plan="p", migration="m1", vm="vm1", disk_id="d", done=1, total=2)
    )
    async with Running(router, bus):

        async def stepped() -> bool:
            return any(isinstance(m, migration.StepCompleted) for m in await _events(bus))

        await eventually(stepped)

    # Then the handled one produced the controller's event, the other was acked and ignored
    assert seen == ["vm1"]
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, "controller-events")
    assert info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0


async def test_event_handlers_still_see_a_canceled_vms_events(bus: Bus) -> None:
    # Given a canceled VM and a controller reacting to volume events
    await cancellation.request(bus, "m1", "vm9")
    router = Router(
        Service.CONTROLLER, intake=Intake.events(filter_subjects=["ferry.evt.volume.>"])
    )
    seen: list[bool] = []

    @router.handler(volume.VolumeFailed)
    async def on_failed(evt: volume.VolumeFailed, ctx: Context) -> None:
        seen.append(evt.canceled)

    # When the volume service reports the canceled command
    await bus.publish(
        volume.VolumeFailed(
            plan="p", migration="m1", vm="vm9", command_type="x", reason="canceled", canceled=True
        )
    )
    async with Running(router, bus):
        await eventually(lambda: seen == [True], what="canceled failure delivered")

    # Then the controller saw it (events are facts, not cancelable work)
    info = await bus.js.consumer_info(subjects.EVENTS_STREAM, "controller-events")
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_the_queue_depth_waiting_behind_busy_handlers_is_reported(bus: Bus) -> None:
    # Given one worker whose handler is held, and five commands for it
    router = Router(Service.VOLUME)
    release = asyncio.Event()

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        await release.wait()
        return allocated(cmd)

    await bus.publish_many(allocate(f"vm{i}") for i in range(5))
    observer = Observed()
    async with Running(router, bus, concurrency=1, observer=observer, depth_seconds=0.2):
        # When the depth is read while the worker is busy
        await eventually(lambda: observer.max_in_flight == 1, what="one in flight")
        await eventually(
            lambda: bool(observer.depths) and observer.depths[-1][1] == 4, what="4 waiting"
        )
        # Then the four behind the busy one were reported waiting on the service's consumer
        release.set()
        assert {consumer for consumer, _ in observer.depths} == {"volume-workers"}
        # And when the worker is let go, the queue drains to zero
        await eventually(lambda: observer.depths[-1][1] == 0, what="queue drained")


async def test_a_free_slot_beside_long_handlers_is_filled_at_once(bus: Bus) -> None:
    # Given a replica of four slots, three held by handlers that wait for the test
    # (a busy replica gathers free slots before it fetches, but only briefly)
    router = Router(Service.VOLUME)
    release = asyncio.Event()
    started: dict[str, float] = {}

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> None:
        started[cmd.vm] = time.monotonic()
        if cmd.vm.startswith("long"):
            await release.wait()

    async with Running(router, bus, concurrency=4):
        await bus.publish_many(allocate(f"long{i}") for i in range(3))
        await eventually(lambda: len(started) == 3, within=30)

        # When one more command arrives
        sent = time.monotonic()
        await bus.publish(allocate("quick"))
        await eventually(lambda: "quick" in started, within=30)
        release.set()
        await eventually(lambda: _queue_empty(bus), within=30)

    # Then it ran in its free slot at once, not after the long ones
    assert started["quick"] - sent < 2.0
