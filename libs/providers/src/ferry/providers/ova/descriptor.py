"""The OVF descriptor, read defensively and mapped onto Ferry's inventory.

Three exporters matter and they disagree in detail:

- VMware (ovftool, vSphere): OVF 1.x, ``vmw:osType``, ``vmw:CoresPerSocket``,
  ``<vmw:Config vmw:key="firmware" vmw:value="efi"/>``, MACs in ``rasd:Address``,
  capacity with ``capacityAllocationUnits="byte * 2^30"``.
- VirtualBox: OVF 1.0 or 2.0, capacity in bytes, host resources ``/disk/<id>``, and
  its own ``vbox:Machine`` section holding firmware (``<Firmware type="EFI"/>``) and
  MACs (``<Adapter MACAddress="080027…"/>``).
- oVirt/RHV: ``<Section xsi:type="ovf:DiskSection_Type">`` instead of named sections,
  ``<Content xsi:type="ovf:VirtualSystem_Type">``, ``ovf:volume-format`` COW/RAW
  overriding the format URI, ``rasd:MACAddress``, sockets/cores/threads as
  ``rasd:num_of_sockets`` …, firmware as ``<BiosType>``.

OVF 2.x splits items into ``EthernetPortItem`` (epasd) and ``StorageItem`` (sasd).
So elements and attributes are matched by local name, whatever their namespace.

The XML is parsed with defusedxml and DTDs forbidden: no external entity, no entity
expansion, no network or file access from the parser.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as StdET
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from xml.etree.ElementTree import Element

import defusedxml
import defusedxml.ElementTree as SafeET

from ferry.proto.inventory import DiskFormat, Firmware, Nic
from ferry.providers.ova import errors

MAX_INT = 2**63 - 1
_DIGITS = re.compile(r"^[+-]?\d{1,40}$")
_BYTE_UNITS = re.compile(r"^byte(?:\s*\*\s*(\d{1,4})\s*\^\s*(\d{1,3}))?$", re.IGNORECASE)
_WORD_UNITS = {
    "byte": 1,
    "bytes": 1,
    "kilobytes": 2**10,
    "kb": 2**10,
    "megabytes": 2**20,
    "mb": 2**20,
    "gigabytes": 2**30,
    "gb": 2**30,
    "terabytes": 2**40,
    "tb": 2**40,
}
_CPU, _MEMORY, _IDE, _SCSI, _NIC, _OTHER_STORAGE, _DISK = 3, 4, 5, 6, 10, 20, 17
_NIC_MODELS = {
    "vmxnet3": "vmxnet3",
    "vmxnet2": "vmxnet2",
    "e1000": "e1000",
    "e1000e": "e1000e",
    "pcnet32": "pcnet",
    "82540em": "e1000",
    "82543gc": "e1000",
    "82545em": "e1000",
    "virtio": "virtio",
    "3": "virtio",  # oVirt's numeric interface types: 3 is pv (virtio)
    "0": "rtl8139",
    "5": "e1000",
}
# oVirt's BiosType: (UEFI values, secure-boot value). 4.4 added CLUSTER_DEFAULT as 0
# and shifted the rest up by one; the envelope's ovf:version tells which applies.
_OVIRT_BIOS_4_4 = ({"3", "4"}, "4")  # Q35_OVMF=3, Q35_SECURE_BOOT=4
_OVIRT_BIOS_OLD = ({"2", "3"}, "3")  # Q35_OVMF=2, Q35_SECURE_BOOT=3


@dataclass(frozen=True)
class DiskRef:
    """One disk of a VirtualSystem, before its image has been looked at."""

    disk_id: str
    file: str | None  # package file name; None for a disk with no content (blank)
    file_size: int | None  # what References claims
    capacity: int
    populated: int | None
    declared: DiskFormat | None  # from the format URI / oVirt volume-format
    bus: str = ""
    boot_order: int | None = None


@dataclass
class System:
    """One VirtualSystem as the descriptor states it."""

    id: str
    name: str
    guest_os: str = ""
    firmware: Firmware = Firmware.BIOS
    secure_boot: bool = False
    cpu_sockets: int = 1
    cpu_cores: int = 1
    cpu_threads: int = 1
    memory_mib: int = 1024
    disks: list[DiskRef] = field(default_factory=list)
    nics: list[Nic] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse(origin: str, data: bytes) -> list[System]:
    """Every VirtualSystem in the descriptor ``data`` read from ``origin``."""
    root = _safe_xml(origin, data)
    if _local(root.tag) != "Envelope":
        raise errors.OvfFormatError(origin, f"root element is {_local(root.tag)!r}, not Envelope")
    files = _references(origin, root)
    disks = _disk_section(origin, root, files)
    version = _attr(root, "version") or ""
    systems = [
        _system(origin, vs, disks, i, version) for i, vs in enumerate(_virtual_systems(root))
    ]
    if not systems:
        raise errors.OvfFormatError(origin, "no VirtualSystem in the descriptor")
    ids = [s.id for s in systems]
    if len(set(ids)) != len(ids):
        raise errors.OvfFormatError(origin, "two VirtualSystems share one ovf:id")
    return systems


def _safe_xml(origin: str, data: bytes) -> Element:
    try:
        root: Element = SafeET.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise errors.UnsafeXmlError(origin, f"refused XML feature: {type(exc).__name__}") from None
    except StdET.ParseError as exc:
        raise errors.OvfFormatError(origin, f"not well-formed XML: {exc}") from None
    return root


# -- namespace-agnostic helpers -------------------------------------------------


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _attr(element: Element, name: str) -> str | None:
    for key, value in element.attrib.items():
        if _local(key) == name:
            return value
    return None


def _children(element: Element, name: str) -> list[Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: Element, name: str) -> str:
    for child in element:
        if _local(child.tag) == name:
            return (child.text or "").strip()
    return ""


def _is(element: Element, kind: str) -> bool:
    """Named section (``DiskSection``) or oVirt's ``Section xsi:type="ovf:DiskSection_Type"``."""
    tag = _local(element.tag)
    if tag == kind:
        return True
    xsi = _attr(element, "type") or ""
    return tag in ("Section", "Content") and xsi.rsplit(":", 1)[-1] == f"{kind}_Type"


def _sections(element: Element, kind: str) -> list[Element]:
    return [child for child in element if _is(child, kind)]


# -- numbers -----------------------------------------------------------------------


def integer(origin: str, what: str, value: str) -> int:
    """A non-negative integer that fits in 63 bits, or :class:`ImageSizeError`."""
    text = value.strip()
    if not _DIGITS.match(text):
        raise errors.ImageSizeError(origin, f"{what} {value!r} is not an integer")
    number = int(text)
    if number < 0:
        raise errors.ImageSizeError(origin, f"{what} {value!r} is negative")
    if number > MAX_INT:
        raise errors.ImageSizeError(origin, f"{what} {value!r} overflows")
    return number


def unit_factor(origin: str, units: str | None) -> int:
    """Bytes per unit for ``byte * 2^30``, ``MegaBytes`` and friends."""
    if not units:
        return 1
    text = units.strip()
    word = _WORD_UNITS.get(text.lower())
    if word is not None:
        return word
    match = _BYTE_UNITS.match(text)
    if match is None:
        raise errors.OvfFormatError(origin, f"unknown allocation units {units!r}")
    if match[1] is None:
        return 1
    base, exponent = int(match[1]), int(match[2])
    if base < 2 or exponent > 62 or base**exponent > MAX_INT:
        raise errors.ImageSizeError(origin, f"allocation units {units!r} overflow")
    return int(base**exponent)


def scaled(origin: str, what: str, value: str, units: str | None) -> int:
    result = integer(origin, what, value) * unit_factor(origin, units)
    if result > MAX_INT:
        raise errors.ImageSizeError(origin, f"{what} {value} * {units} overflows")
    return result


# -- References and DiskSection ---------------------------------------------------


def _references(origin: str, root: Element) -> dict[str, tuple[str, int | None]]:
    files: dict[str, tuple[str, int | None]] = {}
    for refs in _sections(root, "References"):
        for item in _children(refs, "File"):
            file_id, href = _attr(item, "id"), _attr(item, "href")
            if not file_id or not href:
                raise errors.OvfFormatError(origin, "a File without ovf:id or ovf:href")
            if "://" in href or href.startswith("/"):
                raise errors.UnsafeMemberError(origin, f"file reference {href!r} is not local")
            if _attr(item, "compression") or _attr(item, "chunkSize"):
                raise errors.UnsupportedDiskError(origin, f"{href}: compressed/chunked files")
            size = _attr(item, "size")
            claimed = integer(origin, f"size of {href}", size) if size is not None else None
            if file_id in files:
                raise errors.OvfFormatError(origin, f"file id {file_id!r} declared twice")
            files[file_id] = (href, claimed)
    return files


def declared_format(uri: str, volume_format: str | None) -> DiskFormat | None:
    """What the descriptor says the image is; oVirt's volume-format wins over its URI."""
    if volume_format:
        if volume_format.upper() == "COW":
            return DiskFormat.QCOW2
        if volume_format.upper() == "RAW":
            return DiskFormat.RAW
    lowered = uri.lower()
    if "qcow" in lowered:
        return DiskFormat.QCOW2
    if "vmdk" in lowered:
        if "streamoptimized" in lowered:
            return DiskFormat.VMDK_STREAM
        if "flat" in lowered:
            return DiskFormat.VMDK_FLAT
        return DiskFormat.VMDK
    if lowered.endswith(("wiki/byte", "#raw", "/raw")) or lowered == "raw":
        return DiskFormat.RAW
    return None


def _disk_section(
    origin: str, root: Element, files: dict[str, tuple[str, int | None]]
) -> dict[str, DiskRef]:
    disks: dict[str, DiskRef] = {}
    for section in _sections(root, "DiskSection"):
        for item in _children(section, "Disk"):
            ref = _disk(origin, item, files)
            if ref.disk_id in disks:
                raise errors.OvfFormatError(origin, f"disk id {ref.disk_id!r} declared twice")
            disks[ref.disk_id] = ref
    return disks


def _disk(origin: str, item: Element, files: dict[str, tuple[str, int | None]]) -> DiskRef:
    disk_id = _attr(item, "diskId")
    if not disk_id:
        raise errors.OvfFormatError(origin, "a Disk without ovf:diskId")
    capacity_text = _attr(item, "capacity")
    if capacity_text is not None:
        units = _attr(item, "capacityAllocationUnits")
        capacity = scaled(origin, f"capacity of disk {disk_id}", capacity_text, units)
    elif (size_gib := _attr(item, "size")) is not None:  # oVirt export domain: GiB
        capacity = scaled(origin, f"size of disk {disk_id}", size_gib, "byte * 2^30")
    else:
        raise errors.OvfFormatError(origin, f"disk {disk_id} has no capacity")
    if capacity == 0:
        raise errors.ImageSizeError(origin, f"disk {disk_id} has capacity 0")
    populated_text = _attr(item, "populatedSize")
    populated = None
    if populated_text is not None:
        populated = integer(origin, f"populatedSize of disk {disk_id}", populated_text)
        if populated > capacity:
            raise errors.ImageSizeError(
                origin, f"disk {disk_id}: populatedSize {populated} exceeds capacity {capacity}"
            )
    file_ref = _attr(item, "fileRef")
    file_name, file_size = None, None
    if file_ref:
        file_name, file_size = _file(origin, disk_id, file_ref, files)
    declared = declared_format(_attr(item, "format") or "", _attr(item, "volume-format"))
    interface = (_attr(item, "disk-interface") or "").lower()
    boot = (_attr(item, "boot") or "").lower() == "true"
    return DiskRef(
        disk_id=disk_id,
        file=file_name,
        file_size=file_size,
        capacity=capacity,
        populated=populated,
        declared=declared,
        bus=_ovirt_bus(interface),
        boot_order=1 if boot else None,
    )


def _file(
    origin: str, disk_id: str, file_ref: str, files: dict[str, tuple[str, int | None]]
) -> tuple[str, int | None]:
    """The File a disk refers to; oVirt's fileRef names the href, not the id."""
    if file_ref in files:
        return files[file_ref]
    by_href = [entry for entry in files.values() if entry[0] == file_ref]
    if len(by_href) == 1:
        return by_href[0]
    raise errors.MissingFileError(origin, f"disk {disk_id} refers to unknown file {file_ref!r}")


def _ovirt_bus(interface: str) -> str:
    if not interface:
        return ""
    if "scsi" in interface:
        return "scsi"
    if "virtio" in interface:
        return "virtio"
    if "sata" in interface:
        return "sata"
    if "ide" in interface:
        return "ide"
    return interface


# -- VirtualSystem ----------------------------------------------------------------


def _virtual_systems(root: Element) -> list[Element]:
    return [e for e in root.iter() if _is(e, "VirtualSystem")]


def _system(
    origin: str, vs: Element, disks: dict[str, DiskRef], index: int, version: str
) -> System:
    vs_id = _attr(vs, "id") or f"vm{index}"
    system = System(id=vs_id, name=_text(vs, "Name") or vs_id)
    _operating_system(vs, system)
    hardware = _sections(vs, "VirtualHardwareSection")
    if not hardware:
        raise errors.OvfFormatError(
            origin, f"VirtualSystem {vs_id!r} has no VirtualHardwareSection"
        )
    if len(hardware) > 1:
        system.warnings.append("several VirtualHardwareSections; the first is used")
    _hardware(origin, hardware[0], system, disks)
    _vmware_config(hardware[0], system)
    _virtualbox_machine(vs, system)
    _ovirt_bios(vs, system, version)
    return system


def _operating_system(vs: Element, system: System) -> None:
    for section in _sections(vs, "OperatingSystemSection"):
        system.guest_os = (
            _attr(section, "osType")
            or _text(section, "OSType")
            or _text(section, "Description")
            or (_attr(section, "id") or "")
        )


def _items(hardware: Element) -> list[Element]:
    return [c for c in hardware if _local(c.tag) in ("Item", "StorageItem", "EthernetPortItem")]


def _hardware(origin: str, hardware: Element, system: System, disks: dict[str, DiskRef]) -> None:
    items = _items(hardware)
    controllers = {_text(i, "InstanceID"): i for i in items if _resource_type(i) in (5, 6, 20)}
    used: set[str] = set()
    for item in items:
        kind = _resource_type(item)
        if kind == _CPU:
            _cpu(origin, item, system)
        elif kind == _MEMORY:
            memory = scaled(
                origin,
                "memory",
                _text(item, "VirtualQuantity") or "0",
                _text(item, "AllocationUnits") or "byte * 2^20",
            )
            system.memory_mib = max(1, memory // 2**20)
        elif kind == _DISK:
            ref = _disk_of(origin, item, disks)
            if ref is None:
                continue
            if ref.disk_id in used:
                raise errors.OvfFormatError(origin, f"disk {ref.disk_id!r} attached twice")
            used.add(ref.disk_id)
            system.disks.append(_attached(item, ref, controllers))
        elif kind == _NIC:
            system.nics.append(_nic(item, len(system.nics)))


def _resource_type(item: Element) -> int:
    text = _text(item, "ResourceType")
    return int(text) if text.isdigit() and len(text) < 6 else 0


def _cpu(origin: str, item: Element, system: System) -> None:
    sockets = _text(item, "num_of_sockets")
    if sockets:  # oVirt states the topology directly
        system.cpu_sockets = max(1, integer(origin, "num_of_sockets", sockets))
        system.cpu_cores = max(
            1, integer(origin, "cpu_per_socket", _text(item, "cpu_per_socket") or "1")
        )
        system.cpu_threads = max(
            1, integer(origin, "threads_per_cpu", _text(item, "threads_per_cpu") or "1")
        )
        return
    vcpus = max(1, integer(origin, "CPU count", _text(item, "VirtualQuantity") or "1"))
    cores = integer(origin, "CoresPerSocket", _text(item, "CoresPerSocket") or "1") or 1
    if vcpus % cores:
        cores = 1
    system.cpu_sockets, system.cpu_cores = vcpus // cores, cores


def _disk_of(origin: str, item: Element, disks: dict[str, DiskRef]) -> DiskRef | None:
    resource = _text(item, "HostResource")
    if not resource:
        return None  # an empty drive slot
    wanted = resource.rsplit("/disk/", 1)[-1] if "/disk/" in resource else resource
    if wanted in disks:
        return disks[wanted]
    tail = PurePosixPath(wanted).name  # oVirt: imageGroup/imageId
    for ref in disks.values():
        if tail in (ref.disk_id, PurePosixPath(ref.file or "").name):
            return ref
    raise errors.MissingFileError(origin, f"disk item refers to unknown disk {resource!r}")


def _attached(item: Element, ref: DiskRef, controllers: dict[str, Element]) -> DiskRef:
    bus = ref.bus
    parent = controllers.get(_text(item, "Parent"))
    if parent is not None:
        bus = _bus(parent)
    boot = ref.boot_order
    order = _text(item, "BootOrder") or _text(item, "boot_order")
    if order.isdigit() and 0 < int(order) < 1000:
        boot = int(order)
    return DiskRef(
        disk_id=ref.disk_id,
        file=ref.file,
        file_size=ref.file_size,
        capacity=ref.capacity,
        populated=ref.populated,
        declared=ref.declared,
        bus=bus,
        boot_order=boot,
    )


def _bus(controller: Element) -> str:
    kind = _resource_type(controller)
    subtype = _text(controller, "ResourceSubType").lower()
    if kind == _IDE:
        return "ide"
    if kind == _SCSI:
        return "scsi"
    if "nvme" in subtype:
        return "nvme"
    if "ahci" in subtype or "sata" in subtype:
        return "sata"
    return subtype or "sata"


def _nic(item: Element, index: int) -> Nic:
    subtype = _text(item, "ResourceSubType").lower()
    mac = _text(item, "MACAddress") or _text(item, "Address")
    return Nic(
        id=_text(item, "InstanceID") or _text(item, "InstanceId") or f"nic{index}",
        name=_text(item, "ElementName")
        or _text(item, "Name")
        or _text(item, "Caption")
        or f"nic{index}",
        mac=normal_mac(mac),
        network=_text(item, "Connection"),
        model=_NIC_MODELS.get(subtype, subtype),
    )


def normal_mac(value: str) -> str:
    """``00:50:56:aa:bb:cc`` from any of the spellings exporters use, else ``""``."""
    hexdigits = re.sub(r"[^0-9A-Fa-f]", "", value)
    if len(hexdigits) != 12 or len(value) > 17:
        return ""
    return ":".join(hexdigits[i : i + 2] for i in range(0, 12, 2)).lower()


def _vmware_config(hardware: Element, system: System) -> None:
    for config in _children(hardware, "Config"):
        key, value = _attr(config, "key") or "", (_attr(config, "value") or "").lower()
        if key == "firmware":
            system.firmware = Firmware.UEFI if value == "efi" else Firmware.BIOS
        elif key in ("uefi.secureBoot.enabled", "bootOptions.efiSecureBootEnabled"):
            system.secure_boot = value == "true"


def _virtualbox_machine(vs: Element, system: System) -> None:
    for machine in _children(vs, "Machine"):
        adapters = []
        for element in machine.iter():
            tag = _local(element.tag)
            if tag == "Firmware" and (_attr(element, "type") or "").upper().startswith("EFI"):
                system.firmware = Firmware.UEFI
            elif tag == "Adapter" and (_attr(element, "enabled") or "false") == "true":
                adapters.append(element)
        _virtualbox_macs(adapters, system)


def _virtualbox_macs(adapters: list[Element], system: System) -> None:
    """VirtualBox keeps MACs only in its own section.

    Its hardware section lists one Ethernet item per enabled adapter, in slot
    order, so the n-th enabled adapter is the n-th NIC.
    """
    adapters.sort(key=lambda a: int(s) if (s := _attr(a, "slot") or "").isdigit() else 0)
    for index, adapter in enumerate(adapters[: len(system.nics)]):
        nic = system.nics[index]
        mac = normal_mac(_attr(adapter, "MACAddress") or "")
        if mac and not nic.mac:
            system.nics[index] = Nic(
                id=nic.id, name=nic.name, mac=mac, network=nic.network, model=nic.model
            )


def _ovirt_bios(vs: Element, system: System, version: str) -> None:
    bios = _text(vs, "BiosType")
    if not bios:
        return
    major_minor = re.match(r"^(\d+)\.(\d+)", version)
    old = major_minor is not None and (int(major_minor[1]), int(major_minor[2])) < (4, 4)
    uefi, secure = _OVIRT_BIOS_OLD if old else _OVIRT_BIOS_4_4
    if bios in uefi:
        system.firmware = Firmware.UEFI
        system.secure_boot = bios == secure
