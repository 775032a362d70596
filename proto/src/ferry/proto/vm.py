"""The vm-service's commands and events: the KubeVirt VirtualMachine."""

from __future__ import annotations

import msgspec

from ferry.proto.base import Command, Failed, StepEvent
from ferry.proto.inventory import Inspection, NetworkTarget, Vm, Volume


class CreateVm(Command, frozen=True, kw_only=True, tag="vm.create_vm.v1"):
    namespace: str
    target_name: str
    inventory: Vm
    volumes: list[Volume]
    networks: list[NetworkTarget] = msgspec.field(default_factory=list)
    inspection: Inspection | None = None
    run: bool = False  # desired running state (from source power and targetPowerState)


class VmCreated(StepEvent, frozen=True, kw_only=True, tag="vm.vm_created.v1"):
    name: str
    namespace: str
    manifest: str = ""  # local platform: path of the VirtualMachine manifest
    existed: bool = False


class PowerOn(Command, frozen=True, kw_only=True, tag="vm.power_on.v1"):
    namespace: str
    target_name: str
    boot_timeout_seconds: int = 600


class VmStarting(StepEvent, frozen=True, kw_only=True, tag="vm.vm_starting.v1"):
    name: str
    console: str = ""


class VmRunning(StepEvent, frozen=True, kw_only=True, tag="vm.vm_running.v1"):
    name: str
    boot_seconds: float = 0.0
    console: str = ""


class PowerOff(Command, frozen=True, kw_only=True, tag="vm.power_off.v1"):
    namespace: str
    target_name: str


class VmStopped(StepEvent, frozen=True, kw_only=True, tag="vm.vm_stopped.v1"):
    name: str


class DeleteVm(Command, frozen=True, kw_only=True, tag="vm.delete_vm.v1"):
    namespace: str
    target_name: str


class VmDeleted(StepEvent, frozen=True, kw_only=True, tag="vm.vm_deleted.v1"):
    name: str


class VmServiceFailed(Failed, frozen=True, kw_only=True, tag="vm.failed.v1"):
    console_tail: list[str] = msgspec.field(default_factory=list)
