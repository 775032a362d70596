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

from collections.abc import Sequence

from ferry.proto.inventory import Vm
from ferry.providers import libvirtxml
from ferry.providers.base import QemuSource


def source_xml(vm: Vm, disks: Sequence[QemuSource]) -> bytes:
    """The domain of ``vm`` whose disks (in ``vm.disks`` order) are read as ``disks``."""
    # virt-v2v's own OVA input calls every OVA guest a VMware one; so does this.
    return libvirtxml.source_domain(vm, [source.filename() for source in disks])
