"""virt-inspector's XML and virt-v2v's decisions, merged into the wire Inspection."""

from __future__ import annotations

import pytest
from defusedxml import DTDForbidden, EntitiesForbidden

from ferry.conversion_service import inspection
from ferry.conversion_service.progress import Decisions
from ferry.proto.inventory import Firmware, ProviderType, Vm

# What virt-inspector 1.48 printed for the converted test guest (trimmed).
DEBIAN = b"""<?xml version="1.0"?>
<operatingsystems>
  <operatingsystem>
    <root>/dev/sda1</root>
    <name>linux</name>
    <arch>x86_64</arch>
    <distro>debian</distro>
    <product_name>12.15</product_name>
    <major_version>12</major_version>
    <minor_version>15</minor_version>
    <package_format>deb</package_format>
    <hostname>ferry-test-guest</hostname>
    <osinfo>debian12</osinfo>
    <mountpoints>
      <mountpoint dev="/dev/sda1">/</mountpoint>
    </mountpoints>
  </operatingsystem>
</operatingsystems>
"""

VM = Vm(id="v", name="v", provider_type=ProviderType.OVA)


def converted() -> Decisions:
    return Decisions(
        virtio_drivers=True,
        uefi=False,
        capabilities={"block_bus": "virtio-blk", "net_bus": "virtio-net", "machine": "q35"},
    )


def test_parse_reads_the_operating_system() -> None:
    # Given virt-inspector's XML for the Debian guest
    (system,) = inspection.parse(DEBIAN)
    # Then every field is read
    assert system.type == "linux"
    assert system.distro == "debian"
    assert system.version == "12.15"
    assert system.arch == "x86_64"
    assert system.osinfo == "debian12"
    assert system.hostname == "ferry-test-guest"
    assert system.mountpoints == {"/": "/dev/sda1"}
    assert not system.has_esp


def test_no_operating_system_parses_as_empty() -> None:
    assert inspection.parse(b"<operatingsystems/>") == []


def test_entities_are_refused() -> None:
    # Given XML trying an entity expansion (a guest controls strings in it)
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaa">]><operatingsystems>&a;</operatingsystems>'
    # Then defusedxml refuses it instead of expanding it
    with pytest.raises((EntitiesForbidden, DTDForbidden)):
        inspection.parse(bomb)


def test_summary_merges_inspector_and_virt_v2v() -> None:
    # Given the inspected OS and what virt-v2v decided
    (system,) = inspection.parse(DEBIAN)
    # When summarised
    result = inspection.summary(system, converted(), VM)
    # Then the OS comes from virt-inspector, buses and drivers from virt-v2v
    assert result.os_type == "linux"
    assert result.os_distro == "debian"
    assert result.os_name == "Debian 12.15"
    assert result.os_version == "12.15"
    assert result.firmware is Firmware.BIOS
    assert result.virtio_drivers is True
    assert (result.disk_bus, result.nic_model, result.machine) == ("virtio", "virtio", "q35")


def test_guest_without_virtio_drivers_gets_emulated_devices() -> None:
    # Given virt-v2v could not install virtio drivers (IDE, rtl8139, i440fx)
    (system,) = inspection.parse(DEBIAN)
    decisions = Decisions(
        virtio_drivers=False,
        capabilities={"block_bus": "ide", "net_bus": "rtl8139", "machine": "i440fx"},
    )
    # When summarised
    result = inspection.summary(system, decisions, VM)
    # Then the VM gets devices KubeVirt offers that the guest can drive
    assert result.virtio_drivers is False
    assert (result.disk_bus, result.nic_model, result.machine) == ("sata", "rtl8139", "q35")


def test_firmware_falls_back_to_esp_then_inventory() -> None:
    # Given no UEFI verdict in the log but an EFI system partition in the guest
    mounts = {"/": "/dev/sda2", "/boot/efi": "/dev/sda1"}
    esp = inspection.InspectedOs(type="linux", mountpoints=mounts)
    # Then the guest is UEFI
    assert inspection.summary(esp, Decisions(), VM).firmware is Firmware.UEFI
    # And with neither, the provider's inventory decides
    uefi_vm = Vm(id="v", name="v", provider_type=ProviderType.OVA, firmware=Firmware.UEFI)
    plain = inspection.InspectedOs(type="linux")
    assert inspection.summary(plain, Decisions(), uefi_vm).firmware is Firmware.UEFI


def test_os_from_the_virt_v2v_log() -> None:
    # Given virt-v2v's -v inspection record
    decisions = Decisions(
        inspected={
            "type": "windows",
            "distro": "windows",
            "product_name": "Windows Server 2019 Standard",
            "major_version": "10",
            "minor_version": "0",
            "arch": "x86_64",
        }
    )
    # When the OS is taken from it
    system = inspection.from_log(decisions)
    # Then it reads like virt-inspector's, and a real product name is kept as is
    assert system is not None
    assert inspection.os_name(system) == "Windows Server 2019 Standard"
    assert system.version == "10.0"
    assert inspection.from_log(Decisions()) is None
