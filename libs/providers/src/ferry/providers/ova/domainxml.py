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
from ferry.providers import libvirtxml
from ferry.providers.base import QemuSource


def source_xml(vm: Vm, disks: Sequence[QemuSource]) -> bytes:
    """The domain of ``vm`` whose disks (in ``vm.disks`` order) are read as ``disks``."""
    # virt-v2v's own OVA input calls every OVA guest a VMware one; so does this.
    domain = libvirtxml.domain(vm, "vmware")
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
        bus = libvirtxml.bus_of(disk)
        prefix = libvirtxml.PREFIX[bus]
        index = counters.get(prefix, 0)
        counters[prefix] = index + 1
        element = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(element, "source", file=source.filename())
        ET.SubElement(element, "target", dev=prefix + libvirtxml.drive_name(index), bus=bus)
    libvirtxml.add_nics(devices, vm)
    return libvirtxml.render(domain)
