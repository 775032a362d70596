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
from collections.abc import Sequence

from ferry.proto.inventory import Disk, Firmware, Vm

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


def source_domain(vm: Vm, filenames: Sequence[str]) -> bytes:
    """The source domain of a full conversion: ``vm``'s CPUs, memory, firmware and NICs,
    its disks (in ``vm.disks`` order) read from ``filenames``.

    Each disk's ``<source file>`` is a qemu description (a ``json:`` pseudo-filename)
    and ``<driver type>`` is left out: virt-v2v then serves the disk with ``qemu-nbd``
    (it uses nbdkit's file plugin only for a declared raw file), and qemu takes the
    driver from the description, so it never probes a format. The domain type is
    ``vmware``, as virt-v2v's own OVA and vCenter inputs call such guests.
    """
    element = domain(vm, "vmware")
    cpu = ET.SubElement(element, "cpu")
    ET.SubElement(
        cpu,
        "topology",
        sockets=str(vm.cpu_sockets),
        cores=str(vm.cpu_cores),
        threads=str(vm.cpu_threads),
    )
    os_element = ET.SubElement(
        element, "os", firmware="efi" if vm.firmware is Firmware.UEFI else "bios"
    )
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    devices = ET.SubElement(element, "devices")
    counters: dict[str, int] = {}
    for disk, filename in zip(vm.disks, filenames, strict=True):
        bus = bus_of(disk)
        prefix = PREFIX[bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        disk_element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk_element, "source", file=filename)
        ET.SubElement(disk_element, "target", dev=prefix + drive_name(index), bus=bus)
    add_nics(devices, vm)
    return render(element)


def render(element: ET.Element) -> bytes:
    ET.indent(element)
    document: bytes = ET.tostring(element, encoding="utf-8", xml_declaration=True)
    return document
