"""The vm-service's handlers over a real bus, driving the local platform's QEMU.

Commands go in on the vm-service's work queue; what comes out on the audit
stream is what the controller will see: created, starting, running with the
boot time, or failed with the console tail.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferry.bus import Bus, Router, TopologySettings, declare
from ferry.platform.local import qemu
from ferry.platform.local.vms import LocalVms
from ferry.proto import subjects, vm
from ferry.proto.base import Message
from ferry.proto.inventory import Disk, NetworkTarget, Nic, ProviderType, Vm, Volume
from ferry.proto.subjects import Service
from ferry.testing import guestfiles
from ferry.vm_service import handlers

MiB = 1 << 20
FAST = qemu.QemuSettings(powerdown_seconds=2.0, quit_seconds=2.0, poll_seconds=0.1)
GUEST_BUILDER = Path(__file__).resolve().parents[2] / "guest" / "build_guest.py"


class Service_:
    """The vm-service's router on a test bus, plus a reader of its events."""

    def __init__(self, bus: Bus, platform: LocalVms) -> None:
        self.bus = bus
        self.platform = platform
        self.router = Router(Service.VM)
        handlers.VmHandlers(platform).register(self.router)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.router.run(bus, concurrency=2, stop=self.stop))

    async def until(
        self, migration: str, type_name: str, seconds: float, count: int = 1
    ) -> list[Message]:
        """Every event of ``migration`` up to the ``count``-th of ``type_name``, inclusive."""
        seen: list[Message] = []

        async def read() -> list[Message]:
            stream = self.bus.events(subjects.events_of(migration=migration), follow=True)
            async for _, message in stream:
                seen.append(message)
                if [m.type_name() for m in seen].count(type_name) == count:
                    return seen
            return seen

        try:
            return await asyncio.wait_for(read(), seconds)
        except TimeoutError:
            names = [m.type_name() for m in seen]
            raise AssertionError(f"no {type_name} within {seconds} s; saw {names}") from None

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def service(nats_url: str, tmp_path: Path) -> AsyncIterator[Service_]:
    settings = TopologySettings(ack_wait_seconds=6.0, max_deliver=3)
    async with await Bus.connect(nats_url, name="vm-service-test", settings=settings) as bus:
        await declare(bus, settings, [Service.VM])
        running = Service_(bus, LocalVms(tmp_path / "data", FAST))
        try:
            yield running
        finally:
            await running.close()
            for record in (tmp_path / "data" / "vms").glob("*/*.json"):
                await running.platform.delete_vm(record.parent.name, record.stem)


def create_command(
    migration: str, source: Vm, volumes: list[Volume], attempt: int = 1
) -> vm.CreateVm:
    return vm.CreateVm(
        plan="plan-1",
        migration=migration,
        vm=source.id,
        step="CreateVm",
        attempt=attempt,
        namespace="migrated",
        target_name="",
        inventory=source,
        volumes=volumes,
        networks=[NetworkTarget(nic_id=n.id, type="pod") for n in source.nics],
        inspection=None,
        run=True,
    )


def blank_source(tmp: Path) -> tuple[Vm, list[Volume]]:
    disk = tmp / "blank.raw"
    subprocess.run(["qemu-img", "create", "-f", "raw", str(disk), "64M"], check=True)
    source = Vm(
        id="vm-blank",
        name="Blank VM",
        provider_type=ProviderType.OVA,
        memory_mib=128,
        disks=[Disk(id="d1", name="disk", capacity=64 * MiB)],
        nics=[Nic(id="n1", name="nic", mac="52:54:00:00:00:42")],
    )
    return source, [Volume(disk_id="d1", name="blank-d1", size=64 * MiB, path=str(disk))]


async def test_blank_vm_is_created_then_fails_to_boot_with_console_tail(
    tmp_path: Path, service: Service_
) -> None:
    # Given a VM whose disk boots nothing
    source, volumes = blank_source(tmp_path)

    # When CreateVm, then PowerOn with a 4 s boot limit, go through the bus
    await service.bus.publish(create_command("mig-blank", source, volumes))
    created = (await service.until("mig-blank", "vm.vm_created.v1", 30))[-1]
    await service.bus.publish(
        vm.PowerOn(
            plan="plan-1",
            migration="mig-blank",
            vm=source.id,
            step="PowerOn",
            namespace="migrated",
            target_name="",  # found by its ownership labels
            boot_timeout_seconds=4,
        )
    )
    events = await service.until("mig-blank", "vm.failed.v1", 60)

    # Then the VM was created under its DNS name, started, and failed with the console tail
    assert isinstance(created, vm.VmCreated)
    assert created.name == "blank-vm" and not created.existed
    assert Path(created.manifest).is_file()
    starting = [m for m in events if isinstance(m, vm.VmStarting)]
    assert starting and starting[0].console.endswith("console.log")
    failed = events[-1]
    assert isinstance(failed, vm.VmServiceFailed)
    assert failed.command_type == "vm.power_on.v1"
    assert "did not boot within 4 s" in failed.reason
    assert any("Boot failed" in line for line in failed.detail), failed.detail

    # When the same VM is created again (a retried step) and then deleted
    await service.bus.publish(create_command("mig-blank", source, volumes, attempt=2))
    again = (await service.until("mig-blank", "vm.vm_created.v1", 30, count=2))[-1]
    assert isinstance(again, vm.VmCreated)
    delete = vm.DeleteVm(
        plan="plan-1", migration="mig-blank", vm=source.id, namespace="migrated", target_name=""
    )
    await service.bus.publish(delete)
    deleted = (await service.until("mig-blank", "vm.vm_deleted.v1", 30))[-1]

    # Then the second create found the first VM, and the delete removed it and its QEMU
    assert again.existed
    assert isinstance(deleted, vm.VmDeleted) and deleted.name == "blank-vm"
    assert await service.platform.get_vm("migrated", "blank-vm") is None
    assert qemu.processes_under(service.platform.root) == []


async def test_bad_create_command_fails_permanently_with_the_reason(
    tmp_path: Path, service: Service_
) -> None:
    # Given a CreateVm whose volumes do not cover the VM's disk
    source, _ = blank_source(tmp_path)

    # When it goes through the bus
    await service.bus.publish(create_command("mig-bad", source, []))
    failed = (await service.until("mig-bad", "vm.failed.v1", 30))[-1]

    # Then it fails at once (no retries) with the builder's reason
    assert isinstance(failed, vm.VmServiceFailed)
    assert "no target volume for disk(s): disk" in failed.reason
    assert failed.deliveries == 1


def guest_builder() -> Any:
    return guestfiles.load("ferry_test_guest", GUEST_BUILDER)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first run may build the guest; the boot itself is TCG
async def test_guest_is_reported_running_through_the_bus(tmp_path: Path, nats_url: str) -> None:
    # Given the test guest behind a copy-on-write overlay and a vm-service watching for
    # its login prompt
    guest = guest_builder().ensure_guest()
    overlay = tmp_path / "guest.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-f", "qcow2", "-b", str(guest.raw), "-F", "raw", str(overlay)],
        check=True,
        capture_output=True,
    )
    source = Vm(
        id="vm-guest",
        name=guest.vm_name,
        provider_type=ProviderType.OVA,
        memory_mib=512,
        disks=[Disk(id="d1", name="Hard disk 1", capacity=guest.disk_virtual_size, bus="scsi")],
        nics=[Nic(id="n1", name="Network adapter 1", mac=guest.mac_address)],
    )
    volumes = [
        Volume(
            disk_id="d1",
            name="guest-d1",
            size=guest.disk_virtual_size,
            path=str(overlay),
            format="qcow2",
        )
    ]
    settings = TopologySettings(ack_wait_seconds=6.0, max_deliver=3)
    platform = LocalVms(
        tmp_path / "data", qemu.QemuSettings(boot_marker=guest.login_marker, powerdown_seconds=5)
    )
    async with await Bus.connect(nats_url, name="vm-service-test", settings=settings) as bus:
        await declare(bus, settings, [Service.VM])
        service = Service_(bus, platform)
        try:
            # When the controller's CreateVm and PowerOn arrive
            await bus.publish(create_command("mig-guest", source, volumes))
            await service.until("mig-guest", "vm.vm_created.v1", 60)
            await bus.publish(
                vm.PowerOn(
                    plan="plan-1",
                    migration="mig-guest",
                    vm=source.id,
                    step="PowerOn",
                    namespace="migrated",
                    target_name=guest.vm_name,
                    boot_timeout_seconds=900,
                )
            )
            events = await service.until("mig-guest", "vm.vm_running.v1", 1000)

            # Then the bus carries VmStarting, then VmRunning with the boot time
            types = [m.type_name() for m in events]
            assert types.index("vm.vm_starting.v1") < types.index("vm.vm_running.v1")
            running = events[-1]
            assert isinstance(running, vm.VmRunning)
            assert running.name == "ferry-test-guest"
            assert running.boot_seconds > 0
            assert guest.login_marker in Path(running.console).read_text(errors="replace")
            print(f"\nVmRunning on the bus: booted in {running.boot_seconds:.1f} s")
        finally:
            await service.close()
            await platform.delete_vm("migrated", "ferry-test-guest")


async def test_power_on_never_touches_another_migrations_vm(
    tmp_path: Path, service: Service_
) -> None:
    # Given a VM created by one migration
    source, volumes = blank_source(tmp_path)
    await service.bus.publish(create_command("mig-one", source, volumes))
    await service.until("mig-one", "vm.vm_created.v1", 30)

    # When another migration asks to power on a VM of the same name
    await service.bus.publish(
        vm.PowerOn(
            plan="plan-1",
            migration="mig-two",
            vm=source.id,
            namespace="migrated",
            target_name="blank-vm",
        )
    )
    failed = (await service.until("mig-two", "vm.failed.v1", 30))[-1]

    # Then it fails as not found, and the first migration's VM stays off
    assert isinstance(failed, vm.VmServiceFailed)
    assert "no VirtualMachine for VM vm-blank" in failed.reason
    info = await service.platform.get_vm("migrated", "blank-vm")
    assert info is not None and info.phase.value == "Stopped"
