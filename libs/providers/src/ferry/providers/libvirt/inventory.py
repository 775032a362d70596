"""A libvirt domain as Ferry's inventory: read from its XML, sizes from the daemon.

Parsing is a pure function of the domain XML plus the numbers only the daemon
knows (block sizes, power state), so it is tested without libvirt. Only what a
migration can carry is reported as a disk: file and block disks (``device='disk'``)
in raw or qcow2. CD-ROMs, floppies, network disks and other formats become
warnings on the VM, which the validator turns into preflight reasons when they
hold data the migration would lose.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from xml.etree.ElementTree import Element

from defusedxml import ElementTree

from ferry.proto.inventory import Disk, DiskFormat, Firmware, Nic, PowerState, ProviderType, Vm

_FORMATS = {"raw": DiskFormat.RAW, "qcow2": DiskFormat.QCOW2}
_KIB = 1024
_UNITS = {"b": 1, "bytes": 1, "k": _KIB, "kib": _KIB, "m": _KIB**2, "mib": _KIB**2}
_UNITS |= {"g": _KIB**3, "gib": _KIB**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


@dataclass(frozen=True)
class DiskXml:
    """One disk of the domain XML, as the provider needs it to read it."""

    target: str  # vda, sdb: the disk's id
    path: str  # the file or block device
    format: str  # the driver type as libvirt names it (raw, qcow2, …)
    bus: str
    kind: str  # file | block
    boot_order: int | None
    backing: bool  # a <backingStore> with a source: a chain Ferry cannot read


def parse(xml: str) -> Element:
    root: Element = ElementTree.fromstring(xml)
    return root


def disks(root: Element) -> tuple[list[DiskXml], list[str]]:
    """Migratable disks and a warning per device left out."""
    found: list[DiskXml] = []
    warnings: list[str] = []
    for node in root.findall("./devices/disk"):
        device = node.get("device", "disk")
        kind = node.get("type", "file")
        target_node = node.find("target")
        target = target_node.get("dev", "") if target_node is not None else ""
        bus = target_node.get("bus", "") if target_node is not None else ""
        if device != "disk":
            warnings.append(f"{device} {target} is not migrated")
            continue
        source = node.find("source")
        path = "" if source is None else source.get("file") or source.get("dev") or ""
        driver = node.find("driver")
        fmt = "raw" if driver is None else driver.get("type", "raw")
        if kind not in ("file", "block") or not path:
            warnings.append(f"disk {target} ({kind}) has no local file or device to read")
            continue
        if fmt not in _FORMATS:
            warnings.append(f"disk {target} has format {fmt!r}, not raw or qcow2")
            continue
        boot = node.find("boot")
        backing = node.find("backingStore/source") is not None
        found.append(
            DiskXml(
                target=target,
                path=path,
                format=fmt,
                bus=bus,
                kind=kind,
                boot_order=int(boot.get("order", "0")) if boot is not None else None,
                backing=backing,
            )
        )
    return found, warnings


def vm(
    root: Element,
    power: PowerState,
    sizes: Callable[[str], tuple[int, int]],
    storage: Callable[[str], str],
    host: str = "",
) -> Vm:
    """The Vm for a parsed domain; ``sizes(target)`` is (capacity, allocation) and
    ``storage(path)`` the storage a StorageMap names for a disk."""
    found, warnings = disks(root)
    for disk in found:
        if disk.backing:
            warnings.append(f"disk {disk.target} has a backing chain; only its top is tracked")
    sockets, cores, threads = _topology(root)
    firmware, secure = _firmware(root)
    nics = _nics(root)
    return Vm(
        id=_text(root, "uuid"),
        name=_text(root, "name"),
        provider_type=ProviderType.LIBVIRT,
        power_state=power,
        firmware=firmware,
        secure_boot=secure,
        cpu_sockets=sockets,
        cpu_cores=cores,
        cpu_threads=threads,
        memory_mib=_bytes(root.find("memory")) // _KIB**2,
        guest_os=_os_hint(root),
        host=host,
        disks=[_disk(d, sizes, storage) for d in found],
        nics=nics,
        warnings=warnings,
        virtio_drivers=_runs_on_virtio(found, nics),
    )


def _runs_on_virtio(found: list[DiskXml], nics: list[Nic]) -> bool | None:
    """True when the guest already runs on virtio disks and NICs: it boots from a
    virtio-blk disk, so its kernel (or driver store) has the drivers KubeVirt's
    devices need. None otherwise: not known without reading the guest, so it is
    converted in place."""
    if found and all(d.bus == "virtio" for d in found) and all(n.model == "virtio" for n in nics):
        return True
    return None


def _disk(
    d: DiskXml, sizes: Callable[[str], tuple[int, int]], storage: Callable[[str], str]
) -> Disk:
    capacity, allocation = sizes(d.target)
    return Disk(
        id=d.target,
        name=os.path.basename(d.path) or d.target,
        capacity=capacity,
        format=_FORMATS[d.format],
        storage=storage(d.path),
        allocated=allocation,
        bus=d.bus,
        boot_order=d.boot_order,
    )


def _text(root: Element, path: str) -> str:
    node = root.find(path)
    return (node.text or "").strip() if node is not None else ""


def _bytes(node: Element | None) -> int:
    if node is None or not (node.text or "").strip():
        return 1024 * _KIB**2
    return int((node.text or "0").strip()) * _UNITS.get(node.get("unit", "KiB").lower(), _KIB)


def _topology(root: Element) -> tuple[int, int, int]:
    top = root.find("cpu/topology")
    if top is not None:
        return int(top.get("sockets", 1)), int(top.get("cores", 1)), int(top.get("threads", 1))
    vcpus = int(_text(root, "vcpu") or 1)
    return vcpus, 1, 1  # libvirt's default: one core per socket


def _firmware(root: Element) -> tuple[Firmware, bool]:
    os_node = root.find("os")
    if os_node is None:
        return Firmware.BIOS, False
    loader = os_node.find("loader")
    uefi = os_node.get("firmware") == "efi" or (
        loader is not None and loader.get("type") == "pflash"
    )
    secure = loader is not None and loader.get("secure") == "yes"
    for feature in os_node.findall("firmware/feature"):
        if feature.get("name") == "secure-boot" and feature.get("enabled") == "yes":
            secure = True
    return (Firmware.UEFI if uefi else Firmware.BIOS), secure and uefi


def _os_hint(root: Element) -> str:
    for node in root.iter():
        if node.tag.endswith("}os") and node.get("id"):
            return str(node.get("id"))  # libosinfo's id, such as http://debian.org/debian/12
    return ""


def _nics(root: Element) -> list[Nic]:
    nics: list[Nic] = []
    for index, node in enumerate(root.findall("./devices/interface")):
        mac = node.find("mac")
        source = node.find("source")
        model = node.find("model")
        network = ""
        if source is not None:
            network = source.get("network") or source.get("bridge") or source.get("dev") or ""
        address = mac.get("address", "") if mac is not None else ""
        nics.append(
            Nic(
                id=address or f"net{index}",
                name=f"net{index}",
                mac=address,
                network=network,
                model=model.get("type", "") if model is not None else "",
            )
        )
    return nics
