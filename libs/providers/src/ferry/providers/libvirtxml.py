"""Pieces of a libvirt domain document that virt-v2v reads (``-i libvirtxml``).

Two documents describe a guest to virt-v2v: the OVA provider's source domain (full
conversion over Ferry's own reading of a package) and the conversion-service's
domain of disks already on the target (virt-v2v-in-place). They differ in their
disks and a few attributes; the rest — the header, the bus and drive naming, the
NICs, the rendering — is the same and lives here.

Documents are built with ElementTree, so no value from a source (a VM name such as
``web<1>&co``) can change their structure.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # building only; untrusted XML is parsed with defusedxml

from ferry.proto.inventory import Disk, Vm

# libvirt's <target bus>: VMware's and KubeVirt's spellings mapped onto libvirt's.
BUSES = {"scsi": "scsi", "sata": "sata", "ide": "ide", "virtio": "virtio", "nvme": "sata"}
PREFIX = {"scsi": "sd", "sata": "sd", "ide": "hd", "virtio": "vd"}
NIC_MODELS = {"vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e", "virtio": "virtio"}


def drive_name(index: int) -> str:
    """0 → ``a``, 25 → ``z``, 26 → ``aa``: the suffix of ``sda``, ``sdaa`` …"""
    name = ""
    index += 1
    while index > 0:
        index, remainder = divmod(index - 1, 26)
        name = chr(ord("a") + remainder) + name
    return name


def bus_of(disk: Disk) -> str:
    """The libvirt bus of a source disk's controller (SCSI when the source does not say)."""
    return BUSES.get(disk.bus.lower(), "scsi")


def domain(vm: Vm, kind: str) -> ET.Element:
    """A ``<domain type=kind>`` with the guest's name, memory and vCPUs."""
    element = ET.Element("domain", type=kind)
    ET.SubElement(element, "name").text = vm.name
    ET.SubElement(element, "memory", unit="MiB").text = str(vm.memory_mib)
    ET.SubElement(element, "vcpu").text = str(vm.cpu_sockets * vm.cpu_cores * vm.cpu_threads)
    return element


def add_nics(devices: ET.Element, vm: Vm) -> None:
    """The guest's NICs with their MACs, so virt-v2v's network fixes follow each device."""
    for nic in vm.nics:
        interface = ET.SubElement(devices, "interface", type="network")
        if nic.mac:
            ET.SubElement(interface, "mac", address=nic.mac)
        ET.SubElement(interface, "source", network=nic.network or "default")
        model = NIC_MODELS.get(nic.model.lower())
        if model:
            ET.SubElement(interface, "model", type=model)


def render(element: ET.Element) -> bytes:
    ET.indent(element)
    document: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return document
