"""The source VM as a libvirt domain document, from Ferry's own reading of the package.

virt-v2v's ``-i ova`` reads the package again with its own OVF parser, which
knows fewer dialects than Ferry (VirtualBox's, deployment options, blank disks,
``ovf:/file/`` references): a package Ferry lists correctly could reach
virt-v2v as a guest with no disk. So a full conversion is handed ``-i
libvirtxml`` with this document instead: the disks are exactly the ones the
inventory promised, in its order, each as the checked qemu description Ferry
reads it through.

Each disk's ``<source file>`` is that description as a ``json:`` pseudo-filename
and ``<driver type>`` is left out: virt-v2v then serves the disk with
``qemu-nbd`` (it uses nbdkit's file plugin only for a declared raw file), and
qemu takes the driver from the description, so it never probes a format and
never follows a backing file. A window into a tar archive and a blank disk
(``null-co`` reading zeros) are served the same way.

The document is built with ElementTree, so no value from the descriptor (a VM
name such as ``web<1>&co``) can change its structure.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET  # building only; untrusted XML is parsed with defusedxml
from collections.abc import Sequence

from ferry.proto.inventory import Firmware, Vm
from ferry.providers.base import QemuSource

# libvirt's <target bus>: VMware's and KubeVirt's spellings mapped onto libvirt's.
_BUSES = {"scsi": "scsi", "sata": "sata", "ide": "ide", "virtio": "virtio", "nvme": "sata"}
_PREFIX = {"scsi": "sd", "sata": "sd", "ide": "hd", "virtio": "vd"}
_NIC_MODELS = {"vmxnet3": "vmxnet3", "e1000": "e1000", "e1000e": "e1000e", "virtio": "virtio"}


def drive_name(index: int) -> str:
    """0 → ``a``, 25 → ``z``, 26 → ``aa``."""
    name = ""
    index += 1
    while index > 0:
        index, remainder = divmod(index - 1, 26)
        name = chr(ord("a") + remainder) + name
    return name


def source_xml(vm: Vm, disks: Sequence[QemuSource]) -> bytes:
    """The domain of ``vm`` whose disks (in ``vm.disks`` order) are read as ``disks``."""
    # virt-v2v's own OVA input calls every OVA guest a VMware one; so does this.
    domain = ET.Element("domain", type="vmware")
    ET.SubElement(domain, "name").text = vm.name
    ET.SubElement(domain, "memory", unit="MiB").text = str(vm.memory_mib)
    ET.SubElement(domain, "vcpu").text = str(vm.cpu_sockets * vm.cpu_cores * vm.cpu_threads)
    cpu = ET.SubElement(domain, "cpu")
    ET.SubElement(
        cpu,
        "topology",
        sockets=str(vm.cpu_sockets),
        cores=str(vm.cpu_cores),
        threads=str(vm.cpu_threads),
    )
    os_element = ET.SubElement(
        domain, "os", firmware="efi" if vm.firmware is Firmware.UEFI else "bios"
    )
    ET.SubElement(os_element, "type", arch="x86_64").text = "hvm"
    devices = ET.SubElement(domain, "devices")
    counters: dict[str, int] = {}
    for disk, source in zip(vm.disks, disks, strict=True):
        bus = _BUSES.get(disk.bus.lower(), "scsi")
        prefix = _PREFIX[bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(element, "source", file=source.filename())
        ET.SubElement(element, "target", dev=prefix + drive_name(index), bus=bus)
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
