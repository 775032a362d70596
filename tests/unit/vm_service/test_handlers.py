"""The vm-service's handlers through the in-memory broker: the outcomes a service run would
publish (events, and ``Failed`` with its outcome), with neither NATS nor QEMU.

The booting itself is the platform's and is tested against real QEMU in
tests/integration/platform; here the platform is a stand-in that keeps VMs in a
dict and finds them, like both real ones, by *all* their ownership labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ferry.bus import Router
from ferry.platform import kubevirt
from ferry.platform.vms import BootFailed, VmInfo, VmNotFound, VmPhase
from ferry.proto import vm
from ferry.proto.base import FailureOutcome
from ferry.proto.inventory import Volume
from ferry.proto.subjects import Service
from ferry.testing.broker import InMemoryBroker
from ferry.vm_service import handlers


class Platform:
    """VMs in a dict; ``boot_failure`` makes the next wait fail as a guest that never came up."""

    def __init__(self) -> None:
        self.vms: dict[tuple[str, str], VmInfo] = {}
        self.boot_failure: BootFailed | None = None
        self.deleted: list[str] = []

    def add(self, cmd: vm.PowerOn | vm.DeleteVm, name: str) -> None:
        labels = kubevirt.Owner(plan=cmd.plan, migration=cmd.migration, vm_id=cmd.vm).labels()
        self.vms[(cmd.namespace, name)] = VmInfo(name=name, namespace=cmd.namespace, labels=labels)

    async def create_vm(self, manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> VmInfo:
        raise NotImplementedError

    async def get_vm(self, namespace: str, name: str) -> VmInfo | None:
        return self.vms.get((namespace, name))

    async def find_vm(self, namespace: str, labels: Mapping[str, str]) -> VmInfo | None:
        for (ns, _), info in self.vms.items():
            if ns == namespace and all(info.labels.get(k) == v for k, v in labels.items()):
                return info
        return None

    async def start_vm(self, namespace: str, name: str) -> VmInfo:
        if (namespace, name) not in self.vms:
            raise VmNotFound(f"no VM {namespace}/{name}")
        return VmInfo(name=name, namespace=namespace, phase=VmPhase.STARTING, console=f"{name}.log")

    async def wait_running(self, namespace: str, name: str, time_limit: float) -> VmInfo:
        if self.boot_failure is not None:
            raise self.boot_failure
        return VmInfo(name=name, namespace=namespace, phase=VmPhase.RUNNING, boot_seconds=2.0)

    async def stop_vm(self, namespace: str, name: str) -> VmInfo:
        return self.vms[(namespace, name)]

    async def delete_vm(self, namespace: str, name: str) -> bool:
        self.deleted.append(name)
        return self.vms.pop((namespace, name), None) is not None


def _router(platform: Platform) -> Router:
    router = Router(Service.VM)
    handlers.VmHandlers(platform).register(router)
    return router


POWER_ON = vm.PowerOn(plan="p", migration="m1", vm="vm-7", namespace="ns", target_name="web")


async def test_power_on_reports_starting_then_running() -> None:
    # Given the migrated VM exists
    platform = Platform()
    platform.add(POWER_ON, "web")

    # When it is powered on
    async with InMemoryBroker(_router(platform)) as broker:
        done = await broker.send(POWER_ON)

    # Then "starting" (with the console) came before "running", and the command was acked
    assert done.settled == "ack"
    starting, running = done.published
    assert isinstance(starting, vm.VmStarting) and starting.console == "web.log"
    assert isinstance(running, vm.VmRunning) and running.boot_seconds == 2.0


async def test_a_guest_that_does_not_boot_fails_for_good_with_its_console() -> None:
    # Given a VM whose guest never comes up
    platform = Platform()
    platform.add(POWER_ON, "web")
    platform.boot_failure = BootFailed("no login prompt", ["kernel panic"])

    # When it is powered on
    async with InMemoryBroker(_router(platform)) as broker:
        done = await broker.send(POWER_ON)

    # Then it is not retried: a permanent failure with the console's last lines
    failed = done.failed
    assert done.settled == "term" and done.deliveries == 1
    assert isinstance(failed, vm.VmServiceFailed)
    assert failed.outcome is FailureOutcome.PERMANENT
    assert failed.reason == "the VM did not boot: no login prompt"
    assert failed.detail == ["kernel panic"]


async def test_power_on_of_another_migrations_vm_is_not_found() -> None:
    # Given a VM of the same name made by another migration
    platform = Platform()
    platform.add(
        vm.PowerOn(plan="p", migration="m0", vm="vm-7", namespace="ns", target_name="web"), "web"
    )

    # When this migration powers "its" VM on
    async with InMemoryBroker(_router(platform)) as broker:
        done = await broker.send(POWER_ON)

    # Then the other VM is left alone and the command fails for good
    assert done.failed is not None and done.failed.outcome is FailureOutcome.PERMANENT
    assert "no VirtualMachine for VM vm-7" in done.failed.reason


async def test_deleting_twice_succeeds_both_times() -> None:
    # Given a VM to delete
    platform = Platform()
    delete = vm.DeleteVm(plan="p", migration="m1", vm="vm-7", namespace="ns", target_name="web")
    platform.add(delete, "web")

    # When the delete command is delivered twice (a redelivery after a lost ack)
    async with InMemoryBroker(_router(platform)) as broker:
        first = await broker.send(delete)
        second = await broker.send(delete)

    # Then both report the VM deleted, and the platform deleted it once
    assert first.published == [vm.VmDeleted(plan="p", migration="m1", vm="vm-7", name="web")]
    assert second.settled == "ack" and isinstance(second.published[0], vm.VmDeleted)
    assert platform.deleted == ["web"]
