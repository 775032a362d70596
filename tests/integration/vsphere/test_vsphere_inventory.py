"""Inventory and preflight concerns of a vSphere source, read from the simulator."""

from __future__ import annotations

from typing import Any

from pyVmomi import vim
from vcsimkit import find_vm, run

from ferry.proto.inventory import ConcernCode, Firmware, PowerState, ProviderType
from ferry.providers.vsphere.provider import VsphereProvider


async def test_topology_and_a_vm_as_vcenter_describes_them(provider: VsphereProvider) -> None:
    # Given the simulator's stock datacenter (a cluster of three hosts, one standalone)
    # When the provider reads the inventory
    found = await provider.read()

    # Then datacenters, clusters and hosts are there with their places
    [dc] = found.datacenters
    assert dc.name == "DC0"
    assert dc.clusters == ["DC0_C0"]
    assert {(h.name, h.cluster) for h in dc.hosts} == {
        ("DC0_C0_H0", "DC0_C0"),
        ("DC0_C0_H1", "DC0_C0"),
        ("DC0_C0_H2", "DC0_C0"),
        ("DC0_H0", ""),
    }
    # And a VM carries its disks, NICs, firmware, guest id, CBT state and power
    vm = next(v for v in found.vms if v.name == "DC0_C0_RP0_VM0")
    assert vm.id.startswith("vm-") and vm.provider_type is ProviderType.VSPHERE
    assert (vm.datacenter, vm.cluster, vm.host.startswith("DC0_C0_H")) == ("DC0", "DC0_C0", True)
    assert vm.power_state is PowerState.ON
    assert vm.firmware is Firmware.BIOS and vm.guest_os == "otherGuest"
    assert vm.change_tracking is False and vm.snapshots == []
    [disk] = vm.disks
    assert disk.capacity == 1024 * 1024
    assert disk.backing == "[LocalDS_0] DC0_C0_RP0_VM0/disk1.vmdk"
    assert (disk.storage, disk.bus, disk.thin, disk.mode) == (
        "LocalDS_0",
        "scsi",
        True,
        "persistent",
    )
    assert not disk.rdm and not disk.shared and disk.controller
    [nic] = vm.nics
    assert nic.mac.count(":") == 5 and nic.network == "DC0_DVPG0" and nic.model == "e1000"
    # And by name or id, the same VM
    assert await provider.vm(vm.name) == await provider.vm(vm.id)


def _edit_disk(ref: Any, **backing: Any) -> vim.vm.device.VirtualDeviceSpec:
    disk = next(d for d in ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk))
    for key, value in backing.items():
        setattr(disk.backing, key, value)
    return vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)


async def test_each_preflight_concern_from_a_vm_built_to_trigger_it(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given VMs shaped by an administrator, one oddity each
    def shape(name: str, spec: vim.vm.ConfigSpec) -> None:
        run(find_vm(admin, name).ReconfigVM_Task(spec))

    shape("DC0_H0_VM0", vim.vm.ConfigSpec(changeTrackingEnabled=True))
    ref = find_vm(admin, "DC0_H0_VM1")
    run(ref.CreateSnapshot_Task("before-upgrade", "", False, False))
    ref = find_vm(admin, "DC0_C0_RP0_VM0")
    shape(
        "DC0_C0_RP0_VM0",
        vim.vm.ConfigSpec(
            deviceChange=[
                _edit_disk(ref, diskMode="independent_persistent", sharing="sharingMultiWriter")
            ]
        ),
    )
    shape(
        "DC0_C0_RP0_VM1",
        vim.vm.ConfigSpec(
            firmware="efi", bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True)
        ),
    )

    # When the inventory is read
    vms = {vm.name: vm for vm in await provider.inventory()}

    def codes(name: str) -> set[ConcernCode]:
        return {c.code for c in vms[name].concerns}

    # Then each VM carries the concern that names its oddity, and only that
    assert codes("DC0_H0_VM0") == set()  # CBT on: nothing to say
    assert codes("DC0_H0_VM1") == {ConcernCode.CBT_DISABLED, ConcernCode.SNAPSHOTS}
    assert codes("DC0_C0_RP0_VM0") == {
        ConcernCode.CBT_DISABLED,
        ConcernCode.INDEPENDENT_DISK,
        ConcernCode.SHARED_DISK,
    }
    assert codes("DC0_C0_RP0_VM1") == {ConcernCode.CBT_DISABLED, ConcernCode.SECURE_BOOT}
    # And CBT off blocks warm migrations only; the snapshot names itself
    [cbt] = [c for c in vms["DC0_H0_VM1"].concerns if c.code is ConcernCode.CBT_DISABLED]
    [snap] = [c for c in vms["DC0_H0_VM1"].concerns if c.code is ConcernCode.SNAPSHOTS]
    assert cbt.warm_only and not snap.warm_only and "before-upgrade" in snap.message
