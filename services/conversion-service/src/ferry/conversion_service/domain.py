"""The libvirt domain XML that tells virt-v2v-in-place what to convert.

virt-v2v-in-place reads its guest from ``-i libvirtxml FILE``: name, memory,
vCPUs, firmware, and the disks as they now sit on the target (files, or block
devices for Block volumes) in source order. The source's controller is kept
(``scsi``/``sata``/``ide``) because that is the bus the unconverted guest booted
from; virt-v2v decides the target bus itself. NICs are listed with their MAC so
that virt-v2v's network-name fixes (udev rules, ifcfg) follow the right device.

The XML is built with ElementTree: every value is escaped, so a VM name such as
``web<1>&co`` cannot change the document.
"""

from __future__ import annotations

import stat
import xml.etree.ElementTree as ET  # building only; parsing untrusted XML uses defusedxml
from collections.abc import Mapping, Sequence
from pathlib import Path

from ferry.platform.workloads import Placed
from ferry.proto.inventory import Firmware, Vm, Volume
from ferry.providers import libvirtxml

drive_name = libvirtxml.drive_name


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(Path(path).stat().st_mode)
    except OSError:
        return False


def _disk(devices: ET.Element, volume: Volume, bus: str, index: int, seen: Placed | None) -> None:
    path = seen.disk if seen is not None else volume.path
    block = seen.block if seen is not None else _is_block(path)
    disk = ET.SubElement(devices, "disk", type="block" if block else "file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=volume.format or "raw")
    ET.SubElement(disk, "source", {"dev" if block else "file": path})
    ET.SubElement(disk, "target", dev=libvirtxml.PREFIX[bus] + drive_name(index), bus=bus)


def domain_xml(
    vm: Vm, volumes: Sequence[Volume], placed: Mapping[str, Placed] | None = None
) -> bytes:
    """The domain document for ``vm`` whose disks are ``volumes`` (in disk order).

    ``placed`` says where the converting workload sees each volume (a pod's device or
    mounted image); without it, the volumes' own paths on this host.
    """
    domain = libvirtxml.domain(vm, "kvm")
    os_attributes = {"firmware": "efi"} if vm.firmware is Firmware.UEFI else {}
    os_element = ET.SubElement(domain, "os", os_attributes)
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_element, "boot", dev="hd")
    features = ET.SubElement(domain, "features")
    for feature in ("acpi", "apic"):
        ET.SubElement(features, feature)
    devices = ET.SubElement(domain, "devices")
    buses = {disk.id: libvirtxml.bus_of(disk) for disk in vm.disks}
    for index, volume in enumerate(volumes):
        seen = placed[volume.name] if placed is not None else None
        _disk(devices, volume, buses.get(volume.disk_id, "scsi"), index, seen)
    libvirtxml.add_nics(devices, vm)
    return libvirtxml.render(domain)
