"""The vSphere provider (``type: vsphere``): vCenter or ESXi through pyVmomi.

Forklift's file set: ``client`` (trust, login, properties, tasks), ``inventory``,
``validator`` (preflight concerns), ``power``, ``snapshots``, ``disks`` (reads over
the datastore HTTP path), ``nfc`` and ``nfcreader`` (reads through an export lease,
``diskTransfer: nfc``), ``warm`` (snapshots as checkpoints, CBT change ids as
deltas) and ``v2v`` (virt-v2v input). This module only wires them
to the :class:`ferry.providers.base.Provider` seam.

Every operation looks the VM up again by its managed object id, so a VM removed
mid-migration is a :class:`VmNotFound` with its id, never a stale reference.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from pyVmomi import vim, vmodl

from ferry.proto.inventory import Extent, PowerState, Vm
from ferry.providers.base import DiskNotFound, Pace, ProviderError, V2vInput, VmNotFound
from ferry.providers.vsphere import (
    changes,
    client,
    inventory,
    keepalive,
    nfc,
    power,
    snapshots,
    v2v,
    warm,
)
from ferry.providers.vsphere.disks import DatastoreDiskReader, DatastoreFile
from ferry.providers.vsphere.nfcreader import NfcDiskReader

COLD_TRANSFERS = ("virt-v2v", "importer")


def cold_transfer(settings: Mapping[str, str]) -> bool:
    """The Provider's ``coldTransfer``: ``virt-v2v`` (flow 3, the default) copies a cold
    VM's disks while it converts the guest; ``importer`` copies them with the importer
    and converts in place afterwards (flow 1 without precopies). True for the importer."""
    chosen = settings.get("coldTransfer", "virt-v2v") or "virt-v2v"
    if chosen not in COLD_TRANSFERS:
        raise ProviderError(
            f"vSphere provider setting coldTransfer is {chosen!r}; "
            f"one of {', '.join(COLD_TRANSFERS)}"
        )
    return chosen == "importer"


class VsphereProvider:
    """A :class:`ferry.providers.base.Provider` over one vCenter or ESXi."""

    def __init__(
        self,
        session: client.Session,
        *,
        importer_copy: bool = False,
        disk_transfer: str = "datastore",
    ) -> None:
        self.session = session
        self.importer_copy = importer_copy
        self.disk_transfer = disk_transfer
        self.leases = nfc.Leases(session)

    @classmethod
    def create(
        cls, url: str, settings: Mapping[str, str], secret: Mapping[str, Any] | None
    ) -> VsphereProvider:
        credentials = client.Credentials.from_secret(secret)
        trust = client.Trust.from_provider(settings, secret)
        session = client.Session(url, credentials, trust, keepalive.seconds_of(settings))
        return cls(
            session,
            importer_copy=cold_transfer(settings),
            disk_transfer=nfc.disk_transfer(settings),
        )

    async def close(self) -> None:
        await self.session.close()

    # -- reachability and inventory ----------------------------------------------

    async def check(self) -> None:
        await self.session.call(lambda si: si.CurrentTime())

    async def read(self) -> inventory.Found:
        """Datacenters, clusters, hosts and VMs, in one pass."""
        found = await self.session.call(inventory.read)
        if self.importer_copy:
            found.vms = [msgspec.structs.replace(vm, importer_copy=True) for vm in found.vms]
        return found

    async def inventory(self) -> list[Vm]:
        return (await self.read()).vms

    async def vm(self, id_or_name: str) -> Vm:
        vms = await self.inventory()
        for vm in vms:
            if vm.id == id_or_name:
                return vm
        named = [vm for vm in vms if vm.name == id_or_name]
        if len(named) == 1:
            return named[0]
        if named:
            raise VmNotFound(id_or_name, [f"{vm.id} (ambiguous name)" for vm in named])
        raise VmNotFound(id_or_name, [vm.id for vm in vms])

    def _ref(self, si: Any, vm_id: str) -> Any:
        """The VM's managed object, checked to still exist."""
        ref = vim.VirtualMachine(vm_id, stub=si._stub)
        try:
            _ = ref.name
        except vmodl.fault.ManagedObjectNotFound:
            raise VmNotFound(vm_id) from None
        return ref

    async def _on_vm(self, vm: Vm, fn: Any) -> Any:
        return await self.session.call(lambda si: fn(self._ref(si, vm.id)))

    # -- power --------------------------------------------------------------------

    async def power_state(self, vm: Vm) -> PowerState:
        result: PowerState = await self._on_vm(vm, power.state)
        return result

    async def shutdown(self, vm: Vm, timeout: float) -> bool:  # noqa: ASYNC109
        forced: bool = await self._on_vm(vm, lambda ref: power.shutdown(ref, timeout))
        return forced

    async def power_on(self, vm: Vm) -> None:
        await self._on_vm(vm, power.power_on)

    # -- snapshots ----------------------------------------------------------------

    async def snapshot(self, vm: Vm, tag: str) -> str:
        """Take ``ferry-<tag>`` (quiesced when Tools runs); its managed object id."""

        def take(ref: Any) -> str:
            quiesce = snapshots.tools_running(ref) and power.state(ref) is PowerState.ON
            return str(snapshots.create(ref, tag, quiesce=quiesce)._moId)

        result: str = await self._on_vm(vm, take)
        return result

    async def remove_snapshots(self, vm: Vm) -> list[str]:
        """Remove every snapshot Ferry left on the VM; harmless when there is none."""
        removed: list[str] = await self._on_vm(vm, snapshots.remove_all)
        return removed

    # -- warm migration (ferry.providers.base.WarmSource) ---------------------------

    def changes(self, vm: Vm, since: str | None, round_id: str = "") -> warm.SnapshotView:
        """The round's ``ferry-cbt-…`` snapshot (a killed attempt's, else a new one) with
        the areas changed since ``since``'s."""
        return warm.SnapshotView(self.session, lambda si: self._ref(si, vm.id), vm, since, round_id)

    async def remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        await self._on_vm(vm, lambda ref: warm.remove(ref, checkpoint))

    async def checkpoints(self, vm: Vm) -> list[str]:
        """Every Ferry snapshot still on the VM (a killed round's too), oldest first."""
        found: list[str] = await self._on_vm(vm, warm.checkpoints)
        return found

    # -- disks and conversion -----------------------------------------------------

    def open_disk(self, vm: Vm, disk_id: str) -> DatastoreDiskReader | NfcDiskReader:
        disk = next((d for d in vm.disks if d.id == disk_id), None)
        if disk is None:
            raise DiskNotFound(vm.id, disk_id)
        if disk.rdm:
            raise ProviderError(f"disk {disk.name!r} of {vm.id} is a raw device mapping")
        if self.disk_transfer == "nfc":
            return NfcDiskReader(
                self.session, self.leases, vm, disk, lambda si: self._ref(si, vm.id)
            )
        file = DatastoreFile.of_backing(vm.datacenter, disk.backing)
        allocation = None
        if vm.change_tracking:

            async def allocation() -> list[Extent]:
                result: list[Extent] = await self._on_vm(
                    vm, lambda ref: changes.changed_areas(ref, int(disk_id), disk.capacity)
                )
                return result

        return DatastoreDiskReader(
            self.session, file, disk.capacity, f"{vm.id}:{disk_id}", allocation
        )

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        if self.disk_transfer == "nfc":
            return await v2v.nfc_input(
                self.session, self.leases, vm, workdir, lambda si: self._ref(si, vm.id), pace
            )
        # the datastore path: the captive nbdkits' reads are paced by the conversion
        return await v2v.v2v_input(self.session, vm, workdir)
