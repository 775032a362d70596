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
from collections.abc import Sequence
from pathlib import Path

from ferry.proto.inventory import Firmware, Vm, Volume

# virt-v2v reads <target bus>; KubeVirt and VMware spellings map onto libvirt's.
_BUSES = {"scsi": "scsi", "sata": "sata", "ide": "ide", "virtio": "virtio", "nvme": "sata"}
_PREFIX = {"scsi": "sd", "sata": "sd", "ide": "hd", "virtio": "vd"}
_NIC_MODELS = {"vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e", "virtio": "virtio"}


def drive_name(index: int) -> str:
    """0 → ``a``, 25 → ``z``, 26 → ``aa``: the suffix of ``sda``, ``sdaa`` …"""
    name = ""
    index += 1
    while index > 0:
        index, remainder = divmod(index - 1, 26)
        name = chr(ord("a") + remainder) + name
    return name


def _is_block(path: str) -> bool:
    try:
        return stat.S_ISBLK(Path(path).stat().st_mode)
    except OSError:
        return False


def _disk(devices: ET.Element, volume: Volume, bus: str, index: int) -> None:
    block = _is_block(volume.path)
    disk = ET.SubElement(devices, "disk", type="block" if block else "file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type=volume.format or "raw")
    ET.SubElement(disk, "source", {"dev" if block else "file": volume.path})
    ET.SubElement(disk, "target", dev=_PREFIX[bus] + drive_name(index), bus=bus)


def domain_xml(vm: Vm, volumes: Sequence[Volume]) -> bytes:
    """The domain document for ``vm`` whose disks are ``volumes`` (in disk order)."""
    domain = ET.Element("domain", type="kvm")
    ET.SubElement(domain, "name").text = vm.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(vm.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vm.cpu_sockets * vm.cpu_cores * vm.cpu_threads)
    os_attributes = {"firmware": "efi"} if vm.firmware is Firmware.UEFI else {}
    os_element = ET.SubElement(domain, "os", os_attributes)
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    ET.SubElement(os_element, "boot", dev="hd")
    features = ET.SubElement(domain, "features")
    for feature in ("acpi", "apic"):
        ET.SubElement(features, feature)
    devices = ET.SubElement(domain, "devices")
    buses = {disk.id: _BUSES.get(disk.bus.lower(), "scsi") for disk in vm.disks}
    for index, volume in enumerate(volumes):
        _disk(devices, volume, buses.get(volume.disk_id, "scsi"), index)
    for nic in vm.nics:
        interface = ET.SubElement(devices, "interface", type="network")
        if nic.mac:
            ET.SubElement(interface, "mac", address=nic.mac)
        ET.SubElement(interface, "source", network=nic.network or "default")
        model = _NIC_MODELS.get(nic.model.lower())
        if model:
            ET.SubElement(interface, "model", type=model)
    ET.indent(domain)
    document: bytes = ET.tostring(domain, encoding="utf-8", xml_declaration=True)
    return document
