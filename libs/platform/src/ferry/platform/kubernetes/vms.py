""":class:`~ferry.platform.vms.VmPlatform` on a cluster with KubeVirt.

The VirtualMachine is built by :mod:`ferry.platform.kubevirt`, checked against
the KubeVirt schema, and created once: it is found by its ownership labels (or
its name, whose labels must then match) before it is created, and a 409 on
create is answered by reading what won the race.

Power is the VM's ``spec.runStrategy`` (``Always`` / ``Halted``), KubeVirt's
declarative switch: a redelivered start or stop patches the same value again.
"Running" is read from the VirtualMachineInstance: phase ``Running``, its
``Ready`` condition true where it is reported, and the ``AgentConnected``
condition true where it is reported (with ``require_guest_agent``, it must be).
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ferry.platform import kubevirt
from ferry.platform.kubernetes import objects
from ferry.platform.kubernetes.client import (
    VIRTUAL_MACHINE,
    VMI,
    AlreadyExists,
    KubeClient,
)
from ferry.platform.settings import KubernetesSettings
from ferry.platform.vms import BootFailed, VmConflict, VmInfo, VmNotFound, VmPhase, VmPlatform
from ferry.proto.inventory import Volume

_STARTING = {"Pending", "Scheduling", "Scheduled"}
_VM_ERRORS = {
    "CrashLoopBackOff",
    "ErrorUnschedulable",
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrorPvcNotFound",
    "ErrorDataVolumeNotFound",
    "DataVolumeError",
    "Unknown",
}
_STOP_POLL_SECONDS = 1.0


def _condition(obj: Mapping[str, Any], kind: str) -> str | None:
    """The status ("True"/"False"/"Unknown") of condition ``kind``, None if not reported."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind:
            return str(condition.get("status"))
    return None


def _created(obj: Mapping[str, Any]) -> float | None:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.timestamp()


def vm_phase(
    vm: Mapping[str, Any], vmi: Mapping[str, Any] | None, require_agent: bool
) -> tuple[VmPhase, str]:
    """(phase, reason) from the VM and its instance, if any."""
    if vmi is not None:
        phase = str((vmi.get("status") or {}).get("phase") or "Pending")
        if phase == "Failed":
            return VmPhase.FAILED, str((vmi.get("status") or {}).get("reason") or "instance failed")
        if phase == "Succeeded":
            return VmPhase.STOPPED, ""
        if phase == "Running":
            ready = _condition(vmi, "Ready") in (None, "True")
            agent_reported = _condition(vmi, "AgentConnected")
            # No agent (yet) matters only when one is required; one reported must be connected.
            agent = not require_agent if agent_reported is None else agent_reported == "True"
            return (VmPhase.RUNNING if ready and agent else VmPhase.STARTING), ""
        return VmPhase.STARTING, ""
    status = str((vm.get("status") or {}).get("printableStatus") or "")
    if status in _VM_ERRORS:
        return VmPhase.FAILED, f"VirtualMachine is {status}"
    strategy = (vm.get("spec") or {}).get("runStrategy")
    running = strategy in ("Always", "RerunOnFailure", "Once") or (vm.get("spec") or {}).get(
        "running"
    )
    return (VmPhase.STARTING if running else VmPhase.STOPPED), ""


class KubeVms:
    def __init__(self, client: KubeClient, settings: KubernetesSettings) -> None:
        self.client = client
        self.settings = settings

    def _info(
        self, vm: Mapping[str, Any], vmi: Mapping[str, Any] | None, existed: bool = False
    ) -> VmInfo:
        meta = vm.get("metadata") or {}
        phase, reason = vm_phase(vm, vmi, self.settings.require_guest_agent)
        boot = None
        if phase == VmPhase.RUNNING and vmi is not None:
            created = _created(vmi)
            boot = round(max(0.0, time.time() - created), 1) if created else None
        return VmInfo(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace", "")),
            labels=dict(meta.get("labels") or {}),
            phase=phase,
            boot_seconds=boot,
            reason=reason,
            existed=existed,
        )

    async def _read(self, namespace: str, name: str, existed: bool = False) -> VmInfo | None:
        vm = await self.client.get(VIRTUAL_MACHINE, namespace, name)
        if vm is None:
            return None
        vmi = await self.client.get(VMI, namespace, name)
        return self._info(vm, vmi, existed)

    async def _require(self, namespace: str, name: str) -> dict[str, Any]:
        vm = await self.client.get(VIRTUAL_MACHINE, namespace, name)
        if vm is None:
            raise VmNotFound(f"no VM {namespace}/{name}")
        return vm

    async def create_vm(self, manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> VmInfo:
        """Validate, then find by labels, then create (409: re-read and compare labels).

        ``volumes`` is not needed here: the manifest already names the claims,
        and the cluster (not Ferry) attaches them when the instance starts.
        """
        objects.validate_object(manifest)
        meta = manifest["metadata"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        labels = kubevirt.owner_labels(manifest)
        if labels:
            found = await self.find_vm(namespace, labels)
            if found is not None:
                return msgspec.structs.replace(found, existed=True)
        try:
            created = await self.client.create(VIRTUAL_MACHINE, manifest)
        except AlreadyExists:
            created = await self._require(namespace, name)
            if kubevirt.owner_labels(created) != labels:
                raise VmConflict(
                    f"VM {namespace}/{name} exists and belongs to {kubevirt.owner_labels(created)}"
                ) from None
            return self._info(created, await self.client.get(VMI, namespace, name), True)
        return self._info(created, None)

    async def get_vm(self, namespace: str, name: str) -> VmInfo | None:
        return await self._read(namespace, name)

    async def find_vm(self, namespace: str, labels: Mapping[str, str]) -> VmInfo | None:
        found = await self.client.list(VIRTUAL_MACHINE, namespace, labels)
        if not found:
            return None
        name = sorted(str(vm["metadata"]["name"]) for vm in found)[0]
        return await self._read(namespace, name)

    async def start_vm(self, namespace: str, name: str) -> VmInfo:
        vm = await self._require(namespace, name)
        spec = vm.get("spec") or {}
        if "running" in spec:  # a VM made with the older boolean keeps using it
            patch: dict[str, Any] = {"spec": {"running": True}}
        else:
            patch = {"spec": {"runStrategy": kubevirt.RUN_ALWAYS}}
        if spec.get("runStrategy") != kubevirt.RUN_ALWAYS or "running" in spec:
            vm = await self.client.patch(VIRTUAL_MACHINE, namespace, name, patch)
        return self._info(vm, await self.client.get(VMI, namespace, name))

    async def wait_running(self, namespace: str, name: str, time_limit: float) -> VmInfo:
        """Watch the instance until it runs; :class:`BootFailed` on failure or after the limit."""
        vm = await self._require(namespace, name)
        deadline = time.monotonic() + time_limit
        last = "no instance yet"
        try:
            async with asyncio.timeout(time_limit):
                while True:
                    current = await self.client.get(VMI, namespace, name)
                    info = self._judge(vm, current)
                    if info is not None:
                        return info
                    remaining = max(1.0, deadline - time.monotonic())
                    async for kind, vmi in self.client.watch(VMI, namespace, name, remaining):
                        if kind == "DELETED":
                            continue
                        last = str((vmi.get("status") or {}).get("phase") or "Pending")
                        info = self._judge(vm, vmi)
                        if info is not None:
                            return info
        except TimeoutError:
            raise BootFailed(
                f"the VM did not reach Running within {time_limit:g} s (instance: {last})"
            ) from None

    def _judge(self, vm: Mapping[str, Any], vmi: Mapping[str, Any] | None) -> VmInfo | None:
        """A final answer for ``wait_running`` (Running, or raise), or None to keep waiting."""
        info = self._info(vm, vmi)
        if info.phase == VmPhase.RUNNING:
            return info
        if info.phase == VmPhase.FAILED:
            raise BootFailed(info.reason)
        if info.phase == VmPhase.STOPPED and vmi is None:
            raise BootFailed("the VM is not started")
        return None

    async def stop_vm(self, namespace: str, name: str) -> VmInfo:
        """``runStrategy: Halted`` (KubeVirt shuts the guest down via ACPI), forced at the limit."""
        vm = await self._require(namespace, name)
        spec = vm.get("spec") or {}
        patch: dict[str, Any] = (
            {"spec": {"running": False}}
            if "running" in spec
            else {"spec": {"runStrategy": kubevirt.RUN_HALTED}}
        )
        vm = await self.client.patch(VIRTUAL_MACHINE, namespace, name, patch)
        limit = time.monotonic() + self.settings.stop_timeout
        while await self.client.get(VMI, namespace, name) is not None:
            if time.monotonic() >= limit:
                await self.client.delete(VMI, namespace, name, grace_seconds=0)
                break
            await asyncio.sleep(min(_STOP_POLL_SECONDS, self.settings.poll_seconds))
        return self._info(vm, await self.client.get(VMI, namespace, name))

    async def delete_vm(self, namespace: str, name: str) -> bool:
        """Delete the VM; KubeVirt stops its instance (the deletion propagates)."""
        return await self.client.delete(VIRTUAL_MACHINE, namespace, name)


if TYPE_CHECKING:

    def _conforms(vms: KubeVms) -> VmPlatform:
        return vms
