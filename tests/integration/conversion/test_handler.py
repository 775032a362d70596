"""ConvertGuest over a real nats-server: the handler's failures, leases and heartbeats.

A full conversion over the bus with the real virt-v2v, writing the bound volumes, is
the e2e's (``tests/e2e/test_migration.py``: VM b's volumes, progress to 100 %, the OVA
only read, the guest booted), which runs the four services as processes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

import msgspec
from conversion_harness import platform_volumes

from ferry.bus import Bus, Router, TopologySettings, declare
from ferry.conversion_service import app, lease, v2v
from ferry.conversion_service.progress import Progress
from ferry.conversion_service.settings import ConversionSettings, Settings
from ferry.proto import subjects
from ferry.proto.base import FailureOutcome
from ferry.proto.conversion import (
    ConversionFailed,
    ConversionMode,
    ConversionProgress,
    ConvertGuest,
    GuestConverted,
)
from ferry.proto.inventory import Disk, Inspection, ProviderType, Vm, Volume
from ferry.proto.subjects import Service
from ferry.proto.volume import SourceRef
from ferry.providers.ova.provider import OvaProvider
from ferry.testing.bus import Running, eventually

TOPOLOGY = TopologySettings(ack_wait_seconds=10.0, max_deliver=2, duplicate_window_seconds=60)


# For tests that never reach virt-v2v: no guest build needed.
SMALL_VM = Vm(
    id="small/small",
    name="small",
    provider_type=ProviderType.OVA,
    disks=[Disk(id="d1", name="disk", capacity=1 << 20)],
)


def command(vm: Vm, volumes: list[Volume], ova_dir: Path, **kwargs: Any) -> ConvertGuest:
    return ConvertGuest(
        plan="plan-1",
        migration="mig-1",
        vm="vm-1",
        step="convert",
        namespace="default",
        mode=ConversionMode.FULL,
        provider=SourceRef(provider="ova", type=ProviderType.OVA, url=str(ova_dir)),
        inventory=vm,
        volumes=volumes,
        **kwargs,
    )


async def events(bus: Bus) -> list[object]:
    return [message async for _, message in bus.events(follow=False)]


async def test_unconvertible_command_fails_with_reason_and_log(
    nats_url: str, tmp_path: Path
) -> None:
    ova_dir, provider, source_vm = tmp_path, OvaProvider(tmp_path), SMALL_VM
    # Given a command whose volume does not exist on this host
    settings = Settings(data_dir=tmp_path / "data")
    missing = Volume(
        disk_id=source_vm.disks[0].id, name="gone", size=1, path=str(tmp_path / "gone.img")
    )

    async def lookup(ref: SourceRef) -> OvaProvider:
        return provider

    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        router = app.build_router(bus, settings, providers=lookup)
        # When it arrives
        await bus.publish(command(source_vm, [missing], ova_dir))
        async with Running(router, bus, concurrency=1):

            async def failed() -> bool:
                return any(isinstance(m, ConversionFailed) for m in await events(bus))

            await eventually(failed, within=60, what="ConversionFailed")
        published = await events(bus)

    # Then the failure says which volume is missing, and no conversion ran
    (failure,) = [m for m in published if isinstance(m, ConversionFailed)]
    assert "does not exist" in failure.reason and "'gone'" in failure.reason
    assert failure.deliveries == 1
    assert not [m for m in published if isinstance(m, ConversionProgress)]


async def run_until(bus: Bus, router: Router, kind: type, within: float = 60) -> list[object]:
    async with Running(router, bus, concurrency=1):

        async def arrived() -> bool:
            return any(isinstance(m, kind) for m in await events(bus))

        await eventually(arrived, within=within, what=kind.__name__)
    return await events(bus)


async def test_redelivered_command_of_a_done_conversion_is_not_converted_again(
    nats_url: str, tmp_path: Path
) -> None:
    ova_dir, provider, source_vm = tmp_path, OvaProvider(tmp_path), SMALL_VM
    # Given a conversion of this step and attempt already completed (its result recorded),
    # and volumes that would make a new run fail at once
    settings = Settings(data_dir=tmp_path / "data")
    gone = [Volume(disk_id=source_vm.disks[0].id, name="x", size=1, path=str(tmp_path / "x"))]
    cmd = command(source_vm, gone, ova_dir)
    earlier = GuestConverted(**cmd.reply(), seconds=123.0)

    async def lookup(ref: SourceRef) -> OvaProvider:
        return provider

    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        claims = bus.kv(subjects.Bucket.LOCKS, lease.Claim)
        await claims.put(
            lease.key(cmd.migration, cmd.vm),
            lease.Claim(state="done", owner="replica-a", step="convert", attempt=1, result=earlier),
        )
        router = app.build_router(bus, settings, providers=lookup)
        # When the command is delivered (again)
        await bus.publish(cmd)
        published = await run_until(bus, router, GuestConverted)

    # Then the recorded result is reported again, and nothing was converted or failed
    assert [m for m in published if isinstance(m, GuestConverted)] == [earlier]
    assert not [m for m in published if isinstance(m, ConversionFailed | ConversionProgress)]


async def test_a_vm_held_by_another_replica_waits_for_its_lease(
    nats_url: str, tmp_path: Path
) -> None:
    ova_dir, provider, source_vm = tmp_path, OvaProvider(tmp_path), SMALL_VM
    # Given another replica converting this VM, its lease lapsing in 3 seconds
    settings = Settings(data_dir=tmp_path / "data")
    gone = [Volume(disk_id=source_vm.disks[0].id, name="x", size=1, path=str(tmp_path / "x"))]
    cmd = command(source_vm, gone, ova_dir)

    async def lookup(ref: SourceRef) -> OvaProvider:
        return provider

    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        await bus.kv(subjects.Bucket.LOCKS, lease.Claim).put(
            lease.key(cmd.migration, cmd.vm),
            lease.Claim(state="running", owner="replica-b", expires=time.time() + 3),
        )
        router = app.build_router(bus, settings, providers=lookup)
        # When the command arrives here
        started = time.monotonic()
        await bus.publish(cmd)
        published = await run_until(bus, router, ConversionFailed)
        waited = time.monotonic() - started

    # Then it did not run while the lease was held: it waited, within its first delivery,
    # and ran once the lease lapsed
    (failure,) = [m for m in published if isinstance(m, ConversionFailed)]
    assert failure.deliveries == 1
    assert "does not exist" in failure.reason
    assert waited >= 2.5


async def test_a_duplicate_command_waits_out_a_long_conversion_and_reports_its_result(
    nats_url: str, tmp_path: Path
) -> None:
    ova_dir, provider, source_vm = tmp_path, OvaProvider(tmp_path), SMALL_VM
    # Given another replica running this very step and attempt, renewing its lease
    # (3 s: a renewal every second, so a loaded machine's stall does not let it lapse)
    # for longer than the deliveries this service may spend (max_deliver 2)
    settings = Settings(data_dir=tmp_path / "data")
    gone = [Volume(disk_id=source_vm.disks[0].id, name="x", size=1, path=str(tmp_path / "x"))]
    cmd = command(source_vm, gone, ova_dir)
    result = GuestConverted(**cmd.reply(), seconds=42.0)

    async def lookup(ref: SourceRef) -> OvaProvider:
        return provider

    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        first = lease.Lease(bus, cmd.migration, cmd.vm, cmd.step, cmd.attempt, 3.0, "replica-b")

        async def first_run() -> None:
            async with first.held():
                await asyncio.sleep(6.0)
                await first.complete(result)

        running = asyncio.create_task(first_run())
        await asyncio.sleep(0.3)
        router = app.build_router(bus, settings, providers=lookup)
        # When the same command is sent again (a controller restart past the dedupe window)
        await bus.publish(cmd)
        published = await run_until(bus, router, GuestConverted, within=30)
        await running

    # Then it neither ran nor gave up: it reported the first run's result, once
    assert [m for m in published if isinstance(m, GuestConverted)] == [result]
    assert not [m for m in published if isinstance(m, ConversionFailed)]


async def test_a_command_of_an_older_attempt_does_nothing(nats_url: str, tmp_path: Path) -> None:
    ova_dir, provider, source_vm = tmp_path, OvaProvider(tmp_path), SMALL_VM
    # Given attempt 2 of the step already done, and attempt 1's command delivered late,
    # with volumes that would make a run fail at once
    settings = Settings(data_dir=tmp_path / "data")
    gone = [Volume(disk_id=source_vm.disks[0].id, name="x", size=1, path=str(tmp_path / "x"))]
    old = command(source_vm, gone, ova_dir, attempt=1)
    newer = GuestConverted(**command(source_vm, gone, ova_dir, attempt=2).reply(), seconds=9.0)

    async def lookup(ref: SourceRef) -> OvaProvider:
        return provider

    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        claims = bus.kv(subjects.Bucket.LOCKS, lease.Claim)
        key = lease.key(old.migration, old.vm)
        done = lease.Claim(state="done", owner="replica-a", step="convert", attempt=2, result=newer)
        await claims.put(key, done)
        router = app.build_router(bus, settings, providers=lookup)
        # When the old command arrives
        await bus.publish(old)
        async with Running(router, bus, concurrency=1):
            await asyncio.sleep(4.0)
        published = await events(bus)
        kept = await claims.get(key)

    # Then nothing ran, nothing failed, nothing was re-reported, and the newer result stands
    assert not [m for m in published if isinstance(m, GuestConverted | ConversionFailed)]
    assert kept is not None and kept.value == done


async def test_a_command_naming_a_path_outside_the_services_volumes_is_rejected(
    nats_url: str, tmp_path: Path
) -> None:
    ova_dir, provider, source_vm = tmp_path, OvaProvider(tmp_path), SMALL_VM
    # Given a bound volume of this VM, and a file elsewhere that virt-v2v must never touch
    settings = Settings(data_dir=tmp_path / "data")
    (volume,) = await platform_volumes(settings.data_dir, source_vm)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    aimed = msgspec.structs.replace(volume, path=str(victim))

    async def lookup(ref: SourceRef) -> OvaProvider:
        return provider

    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        router = app.build_router(bus, settings, providers=lookup)
        # When a command names the real volume but aims its path at the file
        await bus.publish(command(source_vm, [aimed], ova_dir))
        published = await run_until(bus, router, ConversionFailed)

    # Then it is refused at once, as permanent, before anything ran; the file is intact
    (failure,) = [m for m in published if isinstance(m, ConversionFailed)]
    assert "path that is not the volume's" in failure.reason
    assert failure.outcome is FailureOutcome.PERMANENT and failure.deliveries == 1
    assert not [m for m in published if isinstance(m, ConversionProgress | GuestConverted)]
    assert victim.read_bytes() == b"precious"


class SilentConverter:
    """Stands in for virt-v2v during a long stage: one stage line, then nothing for a while."""

    def __init__(self, silence: float) -> None:
        self.silence = silence

    async def convert(self, job: v2v.Job, on_progress: v2v.ProgressCallback | None) -> v2v.Result:
        assert on_progress is not None
        await on_progress(Progress(stage="Inspecting the source", elapsed=1.2))
        await asyncio.sleep(self.silence)
        return v2v.Result(inspection=Inspection(), seconds=self.silence, log=Path("v2v.log"))


async def test_a_long_silent_stage_is_reported_by_a_heartbeat_with_stage_and_elapsed_time(
    nats_url: str, tmp_path: Path
) -> None:
    # Given a conversion whose virt-v2v prints nothing for 3 s after its stage line,
    # and a heartbeat of 0.5 s
    settings = Settings(
        data_dir=tmp_path / "data",
        conversion=ConversionSettings(heartbeat_seconds=0.5, progress_interval_seconds=2.0),
    )
    volumes = await platform_volumes(settings.data_dir, SMALL_VM)
    cmd = msgspec.structs.replace(
        command(SMALL_VM, volumes, tmp_path), mode=ConversionMode.IN_PLACE
    )
    async with await Bus.connect(nats_url, name="conversion-test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        router = app.build_router(
            bus, settings, providers=_no_source, converter=SilentConverter(3.0)
        )
        # When it runs
        await bus.publish(cmd)
        published = await run_until(bus, router, GuestConverted)
    # Then the stage was published again through the silence, its elapsed time growing,
    # never more than a heartbeat (and scheduling slack on a loaded machine) apart
    beats = [m for m in published if isinstance(m, ConversionProgress)]
    assert {b.stage for b in beats} == {"Inspecting the source"}
    assert len(beats) >= 5, beats
    elapsed = [b.elapsed for b in beats]
    assert elapsed == sorted(elapsed) and elapsed[-1] >= 2.5
    assert max(b - a for a, b in itertools.pairwise(elapsed)) <= 0.5 + 1.0


async def _no_source(ref: SourceRef) -> OvaProvider:
    raise AssertionError("an in-place conversion opens no source")
