"""The oVirt provider (``type: ovirt``): an engine's VMs through ``ovirtsdk4``.

``url`` is the engine's API (``https://ENGINE/ovirt-engine/api``); the secret holds
``username``, ``password`` and ``cacert``. Inventory and power go through the SDK; disks
are read through image transfers on the hosts' imageio daemons (:mod:`.reader`), the
populator's way (flow 2). Power: the engine's ``shutdown`` (ACPI in the guest), then
``stop`` when the VM is not down within the timeout; ``start`` restores it. Warm
migration (flow 1) is :class:`ferry.providers.base.WarmSource` over the engine's
incremental backups (:mod:`.warm`): each round a backup of the running VM whose
checkpoint the next round counts changes from.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ovirtsdk4 as sdk
from ovirtsdk4 import types

from ferry.proto.inventory import Disk, DiskFormat, Firmware, Nic, PowerState, ProviderType, Vm
from ferry.providers.base import ChangedDisks, Pace, ProviderError, V2vInput, VmNotFound
from ferry.providers.ovirt import backups, transfers
from ferry.providers.ovirt.client import Client
from ferry.providers.ovirt.reader import OvirtDiskReader
from ferry.providers.ovirt.warm import BackupView

POLL = 0.2
_FORMATS = {types.DiskFormat.RAW: DiskFormat.RAW, types.DiskFormat.COW: DiskFormat.QCOW2}
_UEFI = {types.BiosType.Q35_OVMF, types.BiosType.Q35_SECURE_BOOT}
_DOWN = {types.VmStatus.DOWN}
_UP = {types.VmStatus.UP, types.VmStatus.POWERING_UP, types.VmStatus.REBOOT_IN_PROGRESS}


class OvirtProvider:
    """A :class:`ferry.providers.base.Provider` over one engine."""

    def __init__(
        self,
        url: str,
        secret: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = Client(url, secret)
        self.poll = float((settings or {}).get("pollSeconds", POLL))

    def __repr__(self) -> str:
        return f"OvirtProvider({self.client.url!r})"

    async def check(self) -> None:
        await self.client.call(lambda: self.client.connection().test(raise_exception=True))

    async def inventory(self) -> list[Vm]:
        return await self.client.call(self._inventory)

    def _inventory(self) -> list[Vm]:
        found = []
        for vm in self.client.system().vms_service().list():
            try:
                found.append(self._describe(vm))
            except sdk.NotFoundError:
                continue  # removed between the listing and the look: not inventory
        return sorted(found, key=lambda v: v.name)

    async def vm(self, id_or_name: str) -> Vm:
        return await self.client.call(lambda: self._describe(self._find(id_or_name)))

    def _find(self, id_or_name: str) -> Any:
        vms = self.client.system().vms_service()
        try:
            return vms.vm_service(id_or_name).get()
        except sdk.NotFoundError:
            pass
        named = vms.list(search=f"name={id_or_name}")
        if not named:
            raise VmNotFound(id_or_name, [v.name for v in vms.list()])
        return named[0]

    def _describe(self, vm: Any) -> Vm:
        system = self.client.system()
        service = system.vms_service().vm_service(vm.id)
        disks = []
        for att in service.disk_attachments_service().list():
            d = system.disks_service().disk_service(att.disk.id).get()
            domains = d.storage_domains or []
            disks.append(
                Disk(
                    id=str(d.id),
                    name=str(d.alias or d.name or d.id),
                    capacity=int(d.provisioned_size or 0),
                    format=_FORMATS.get(d.format, DiskFormat.RAW),
                    storage=str(domains[0].name or domains[0].id) if domains else "",
                    allocated=int(d.actual_size) if d.actual_size is not None else None,
                    bus=att.interface.value if att.interface else "",
                    boot_order=1 if att.bootable else None,
                    thin=bool(d.sparse) if d.sparse is not None else None,
                    shared=bool(d.shareable),
                    error="" if d.format in _FORMATS else f"disk format {d.format} not readable",
                )
            )
        nics = [
            Nic(
                id=str(n.id),
                name=str(n.name),
                mac=n.mac.address if n.mac else "",
                network=n.network.name if n.network and n.network.name else "",
                model=n.interface.value if n.interface else "",
            )
            for n in service.nics_service().list()
        ]
        topo = vm.cpu.topology if vm.cpu and vm.cpu.topology else None
        bios = vm.bios.type if vm.bios else None
        return Vm(
            id=str(vm.id),
            name=str(vm.name),
            provider_type=ProviderType.OVIRT,
            power_state=_power(vm.status),
            firmware=Firmware.UEFI if bios in _UEFI else Firmware.BIOS,
            secure_boot=bios == types.BiosType.Q35_SECURE_BOOT,
            cpu_sockets=int(topo.sockets or 1) if topo else 1,
            cpu_cores=int(topo.cores or 1) if topo else 1,
            cpu_threads=int(topo.threads or 1) if topo else 1,
            memory_mib=int(vm.memory or 0) // (1 << 20) or 1024,
            guest_os=str(vm.os.type) if vm.os and vm.os.type else "",
            host=self.client.url,
            disks=disks,
            nics=nics,
        )

    async def power_state(self, vm: Vm) -> PowerState:
        return await self.client.call(lambda: _power(self._status(vm)))

    def _status(self, vm: Vm) -> Any:
        try:
            return self.client.system().vms_service().vm_service(vm.id).get().status
        except sdk.NotFoundError as exc:
            raise VmNotFound(vm.id) from exc

    async def shutdown(self, vm: Vm, timeout: float) -> bool:  # noqa: ASYNC109 (source grace period)
        return await self.client.call(self._shutdown, vm, timeout)

    def _shutdown(self, vm: Vm, timeout: float) -> bool:
        service = self.client.system().vms_service().vm_service(vm.id)
        if self._status(vm) in _DOWN:
            return False
        service.shutdown()
        if self._wait(vm, _DOWN, timeout):
            return False
        service.stop()
        if not self._wait(vm, _DOWN, 120.0):
            raise ProviderError(f"oVirt VM {vm.name} did not stop")
        return True

    def _wait(self, vm: Vm, wanted: set[Any], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self._status(vm) in wanted:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.poll)

    async def power_on(self, vm: Vm) -> None:
        await self.client.call(self._start, vm)

    def _start(self, vm: Vm) -> None:
        if self._status(vm) in _UP:
            return
        self.client.system().vms_service().vm_service(vm.id).start()
        if not self._wait(vm, {types.VmStatus.UP}, 300.0):
            raise ProviderError(f"oVirt VM {vm.name} did not come up")

    def open_disk(self, vm: Vm, disk_id: str) -> OvirtDiskReader:
        return OvirtDiskReader(self.client, vm, disk_id)

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        raise ProviderError(
            f"oVirt VM {vm.name}: disks are copied by the populator (flow 2); "
            "virt-v2v's oVirt input is not used"
        )

    async def preflight(self, vm: Vm, *, warm: bool) -> list[str]:
        """Reasons this VM cannot be migrated as planned (:class:`Validator`; empty: it can)."""
        found: list[str] = []
        if warm and vm.disks:
            found += await self.client.call(self._warm_reasons, vm)
        if not vm.disks:
            found.append(f"VM {vm.name} has no disk Ferry can read")
        found += [f"VM {vm.name}: disk {d.name}: {d.error}" for d in vm.disks if d.error]
        shared = [d.name for d in vm.disks if d.shared]
        if shared:
            found.append(
                f"VM {vm.name}: disk(s) {', '.join(shared)} are shared with other VMs; "
                "their image transfer would not be consistent"
            )
        return found

    def _warm_reasons(self, vm: Vm) -> list[str]:
        """Why the engine cannot count ``vm``'s changes for Ferry (empty: it can)."""
        system = self.client.system()
        found = []
        for disk in vm.disks:
            d = system.disks_service().disk_service(disk.id).get()
            if d.format != types.DiskFormat.COW or d.backup != types.DiskBackup.INCREMENTAL:
                found.append(
                    f"VM {vm.name}: disk {disk.name} does not track changes (oVirt counts "
                    "them only on qcow2 disks whose backup mode is incremental); enable "
                    "incremental backup on it or migrate cold"
                )
        left = backups.checkpoints(system, vm.id)
        if left:
            found.append(
                f"VM {vm.name} has {len(left)} incremental-backup checkpoint(s) already; oVirt "
                "does not say whose they are, and a warm migration removes every checkpoint "
                "of the VM when it ends: remove them or migrate cold"
            )
        return found

    # -- WarmSource -------------------------------------------------------------------

    def changes(self, vm: Vm, since: str | None, round_id: str = "") -> ChangedDisks:
        # A killed attempt's backup is ended and the round starts afresh from ``since``
        # (the engine hands a backup's NBD export to one transfer at a time): round_id
        # is not needed to find it.
        return BackupView(self.client, vm, since)

    async def remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        system = self.client.system
        await self.client.call(lambda: backups.remove_checkpoint(system(), vm.id, checkpoint))

    async def checkpoints(self, vm: Vm) -> list[str]:
        system = self.client.system
        return await self.client.call(lambda: backups.checkpoints(system(), vm.id))

    async def release_transfers(self, vm: Vm) -> int:
        """End the image transfers (and backups) Ferry holds on ``vm``
        (:class:`TransferSource`); how many transfers there were."""
        system = self.client.system

        def release() -> int:
            ended = len(transfers.cancel_leftovers(system(), vm.id))
            backups.end_leftovers(system(), vm.id)
            return ended

        return await self.client.call(release)

    async def close(self) -> None:
        await self.client.call(self.client.close)


def _power(status: Any) -> PowerState:
    if status in _DOWN:
        return PowerState.OFF
    if status is None or status == types.VmStatus.UNKNOWN:
        return PowerState.UNKNOWN
    return PowerState.ON
