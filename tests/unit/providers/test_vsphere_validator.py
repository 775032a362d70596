"""vSphere inventory, preflight concerns and the shutdown grace period, without I/O.

The simulator cannot hold a raw device mapping or a virtual TPM (govmomi 0.24
stops serving when either is added), so those two concerns are checked here on
the configuration vCenter would report.
"""

from __future__ import annotations

import time

import pytest
from pyVmomi import vim

from ferry.proto.inventory import ConcernCode, Firmware
from ferry.providers.vsphere import power
from ferry.providers.vsphere.inventory import Names, build_vm


def _config(*devices: vim.vm.device.VirtualDevice, **extra: object) -> vim.vm.ConfigInfo:
    controller = vim.vm.device.ParaVirtualSCSIController(
        key=1000, deviceInfo=vim.Description(label="SCSI controller 0", summary="")
    )
    return vim.vm.ConfigInfo(
        hardware=vim.vm.VirtualHardware(
            numCPU=4, numCoresPerSocket=2, memoryMB=2048, device=[controller, *devices]
        ),
        guestId="rhel9_64Guest",
        firmware="bios",
        **{"changeTrackingEnabled": True, **extra},
    )


def _disk(key: int, backing: vim.vm.device.VirtualDevice.BackingInfo) -> vim.vm.device.VirtualDisk:
    return vim.vm.device.VirtualDisk(
        key=key,
        controllerKey=1000,
        capacityInBytes=8 << 30,
        deviceInfo=vim.Description(label=f"Hard disk {key}", summary=""),
        backing=backing,
    )


NAMES = Names(networks={}, portgroups={}, datastores={"datastore-1": "ssd"})


def test_rdm_disk_and_vtpm_become_concerns() -> None:
    # Given a VM with a flat disk, a raw device mapping and a virtual TPM
    flat = vim.vm.device.VirtualDisk.FlatVer2BackingInfo(
        fileName="[ssd] db/db.vmdk",
        diskMode="persistent",
        thinProvisioned=False,
        datastore=vim.Datastore("datastore-1"),
    )
    rdm = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
        fileName="[ssd] db/lun.vmdk", diskMode="persistent", compatibilityMode="physicalMode"
    )
    config = _config(_disk(2000, flat), _disk(2001, rdm), vim.vm.device.VirtualTPM(key=11000))

    # When the VM is built as the inventory would
    vm = build_vm("vm-7", {"name": "db", "config": config}, "DC", None, NAMES)

    # Then the disks say what they are and the two oddities are concerns
    assert [(d.id, d.rdm, d.thin, d.storage, d.bus) for d in vm.disks] == [
        ("2000", False, False, "ssd", "scsi"),
        ("2001", True, None, "", "scsi"),
    ]
    assert (vm.cpu_sockets, vm.cpu_cores, vm.memory_mib) == (2, 2, 2048)
    assert vm.vtpm
    assert {c.code for c in vm.concerns} == {ConcernCode.RDM_DISK, ConcernCode.VTPM}


def test_cbt_off_is_a_warm_only_concern_and_uefi_without_secure_boot_is_none() -> None:
    # Given a UEFI VM without secure boot and with CBT off
    config = _config(changeTrackingEnabled=False)
    config.firmware = "efi"
    config.bootOptions = vim.vm.BootOptions(efiSecureBootEnabled=False)

    # When it is built
    vm = build_vm("vm-8", {"name": "web", "config": config}, "DC", None, NAMES)

    # Then UEFI is reported, and the only concern is CBT, for warm plans
    assert vm.firmware is Firmware.UEFI and not vm.secure_boot
    [concern] = vm.concerns
    assert concern.code is ConcernCode.CBT_DISABLED and concern.warm_only


@pytest.mark.parametrize(("version", "blocked"), [("vmx-04", True), ("vmx-07", False)])
def test_cbt_that_cannot_be_enabled_says_why_for_warm_plans(version: str, blocked: bool) -> None:
    # Given a VM with CBT off, of old virtual hardware or of hardware that tracks changes
    config = _config(changeTrackingEnabled=False, version=version)

    # When it is built
    vm = build_vm("vm-8", {"name": "old", "config": config}, "DC", None, NAMES)

    # Then the warm-only CBT concern says whether it can be turned on, and why not
    [concern] = vm.concerns
    assert concern.code is ConcernCode.CBT_DISABLED and concern.warm_only
    if blocked:
        assert concern.message.startswith("changed block tracking (CBT) cannot be enabled:")
        assert "vmx-04" in concern.message and "version 7 or later" in concern.message
    else:
        assert concern.message == "changed block tracking (CBT) is off: a warm migration needs it"


class _StubbornGuest:
    """A running VM whose guest acknowledges a shutdown through Tools and keeps running."""

    def __init__(self) -> None:
        self._moId = "vm-9"
        self.runtime = vim.vm.RuntimeInfo(powerState="poweredOn")
        self.guest = vim.vm.GuestInfo(toolsRunningStatus="guestToolsRunning")
        self.asked = 0
        self.forced = 0

    def ShutdownGuest(self) -> None:
        self.asked += 1

    def PowerOffVM_Task(self) -> object:
        self.forced += 1
        self.runtime.powerState = "poweredOff"
        return object()


def test_a_guest_that_ignores_the_shutdown_is_forced_off_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a guest that ignores the shutdown request (and tasks that end at once)
    vm = _StubbornGuest()
    monkeypatch.setattr(power, "POLL", 0.01)
    monkeypatch.setattr(power.client, "wait_for", lambda task, what: None)

    # When it is shut down with a short grace period
    started = time.monotonic()
    forced = power.shutdown(vm, timeout=0.2)

    # Then it was asked first, waited for, and then forced off
    assert (vm.asked, vm.forced, forced) == (1, 1, True)
    assert time.monotonic() - started >= 0.2
