"""The OVF descriptor, read defensively and mapped onto Ferry's inventory.

DSP0243 1.x and 2.0 as vCenter, ovftool, VirtualBox, Packer, Vagrant, oVirt,
virt-v2v, Cisco and Ganeti write it. OVF 2.x splits items into
``EthernetPortItem`` (epasd) and ``StorageItem`` (sasd); both are items here.
What each exporter adds outside the standard lives in :mod:`dialects`; the disks
and files in :mod:`disks`; numbers and units in :mod:`units`; the XML parse and
its limits in :mod:`ovfxml`.

A ``DeploymentOptionSection`` offers several configurations of one appliance;
the active one is the default (the one marked so, else the first) unless the
caller chooses another (a Plan's ``deploymentOption``), and items that belong
only to other configurations are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from xml.etree.ElementTree import Element

from ferry.proto.inventory import Firmware, Nic
from ferry.providers.ova import dialects, disks, errors, ovfxml, units
from ferry.providers.ova.disks import DiskRef, FileRef
from ferry.providers.ova.limits import DEFAULT, Limits
from ferry.providers.ova.ovfxml import attr, children, local, sections, text

_CPU, _MEMORY, _IDE, _SCSI, _NIC, _OTHER_STORAGE, _DISK = 3, 4, 5, 6, 10, 20, 17


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
    configuration: str = ""  # the active deployment option, "" when there are none
    configurations: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Envelope:
    """What every VirtualSystem of one descriptor shares."""

    origin: str
    version: str
    files: dict[str, FileRef]
    disks: dict[str, DiskRef]
    configuration: str
    configurations: list[str]


def parse(
    origin: str, data: bytes, limits: Limits = DEFAULT, configuration: str = ""
) -> list[System]:
    """Every VirtualSystem in the descriptor ``data`` read from ``origin``.

    ``configuration`` chooses a deployment option ("": the default one); one the
    descriptor does not offer is a :class:`DeploymentOptionError` naming those it does.
    """
    root = ovfxml.parse(origin, data, limits)
    if local(root.tag) != "Envelope":
        raise errors.OvfFormatError(origin, f"root element is {local(root.tag)!r}, not Envelope")
    active, offered = _configurations(root)
    if configuration and configuration != active:
        if configuration not in offered:
            raise errors.DeploymentOptionError(
                origin,
                f"deployment option {configuration!r} is not offered; "
                + (
                    "offered: " + ", ".join(repr(c) for c in offered)
                    if offered
                    else "the package has no DeploymentOptionSection"
                ),
            )
        active = configuration
    properties = _properties(root, active)
    files = disks.references(origin, root, limits)
    envelope = _Envelope(
        origin=origin,
        version=attr(root, "version") or "",
        files=files,
        disks=disks.disk_section(origin, root, files, properties),
        configuration=active,
        configurations=offered,
    )
    systems = [
        _system(envelope, vs, i, properties)
        for i, vs in enumerate(_virtual_systems(origin, root, limits, 0))
    ]
    if not systems:
        raise errors.OvfFormatError(origin, "no VirtualSystem in the descriptor")
    ids = [s.id for s in systems]
    if len(set(ids)) != len(ids):
        raise errors.OvfFormatError(origin, "two VirtualSystems share one ovf:id")
    return systems


# -- deployment options and properties ----------------------------------------------


def _configurations(root: Element) -> tuple[str, list[str]]:
    """The active configuration (default, else first) and every one offered."""
    for section in sections(root, "DeploymentOptionSection"):
        offered, default = [], ""
        for option in children(section, "Configuration"):
            option_id = attr(option, "id")
            if not option_id:
                continue
            offered.append(option_id)
            if not default and (attr(option, "default") or "").lower() == "true":
                default = option_id
        if offered:
            return default or offered[0], offered
    return "", []


def _in_configuration(item: Element, active: str) -> bool:
    wanted = attr(item, "configuration")
    return not active or wanted is None or active in wanted.split()


def _properties(root: Element, active: str) -> dict[str, str]:
    """ProductSection properties by ``key`` and ``class.key``, valued for ``active``."""
    found: dict[str, str] = {}
    for section in (e for e in root.iter() if ovfxml.is_section(e, "ProductSection")):
        prefix = attr(section, "class") or ""
        for prop in children(section, "Property"):
            key = attr(prop, "key")
            if not key:
                continue
            value = attr(prop, "value") or ""
            for choice in children(prop, "Value"):
                if active and active in (attr(choice, "configuration") or "").split():
                    value = attr(choice, "value") or value
            found.setdefault(key, value)
            if prefix:
                found[f"{prefix}.{key}"] = value
    return found


# -- VirtualSystem ----------------------------------------------------------------


def _virtual_systems(origin: str, node: Element, limits: Limits, depth: int) -> list[Element]:
    """VirtualSystems of the envelope and of its (bounded) nest of collections."""
    found: list[Element] = []
    for child in node:
        if ovfxml.is_section(child, "VirtualSystem"):
            found.append(child)
        elif ovfxml.is_section(child, "VirtualSystemCollection"):
            if depth + 1 > limits.max_collection_nesting:
                raise errors.OvfFormatError(
                    origin,
                    f"VirtualSystemCollections nested deeper than "
                    f"{limits.max_collection_nesting} (setting max_collection_nesting)",
                )
            found.extend(_virtual_systems(origin, child, limits, depth + 1))
    return found


def _system(envelope: _Envelope, vs: Element, index: int, properties: dict[str, str]) -> System:
    vs_id = attr(vs, "id") or f"vm{index}"
    system = System(
        id=vs_id,
        name=text(vs, "Name") or vs_id,
        configuration=envelope.configuration,
        configurations=list(envelope.configurations),
    )
    if len(envelope.configurations) > 1:
        others = [c for c in envelope.configurations if c != envelope.configuration]
        system.warnings.append(
            f"deployment option {envelope.configuration!r} is used; also offered: "
            + ", ".join(repr(c) for c in others)
        )
    _operating_system(vs, system)
    hardware = sections(vs, "VirtualHardwareSection")
    if not hardware:
        raise errors.OvfFormatError(
            envelope.origin, f"VirtualSystem {vs_id!r} has no VirtualHardwareSection"
        )
    if len(hardware) > 1:
        system.warnings.append("several VirtualHardwareSections; the first is used")
    _hardware(envelope, hardware[0], system, properties)
    dialects.vmware_config(hardware[0], system)
    dialects.virtualbox_machine(vs, system)
    dialects.ovirt_bios(vs, system, envelope.version)
    return system


def _operating_system(vs: Element, system: System) -> None:
    for section in sections(vs, "OperatingSystemSection"):
        system.guest_os = (
            attr(section, "osType")
            or text(section, "OSType")
            or text(section, "Description")
            or (attr(section, "id") or "")
        )


def _items(hardware: Element, active: str) -> list[Element]:
    return [
        c
        for c in hardware
        if local(c.tag) in ("Item", "StorageItem", "EthernetPortItem")
        and _in_configuration(c, active)
    ]


def _hardware(
    envelope: _Envelope, hardware: Element, system: System, properties: dict[str, str]
) -> None:
    origin = envelope.origin
    items = _items(hardware, envelope.configuration)
    controllers = {text(i, "InstanceID"): i for i in items if _resource_type(i) in (5, 6, 20)}
    used: set[str] = set()
    for item in items:
        kind = _resource_type(item)
        if kind == _CPU:
            _cpu(origin, item, system)
        elif kind == _MEMORY:
            quantity = units.resolved(
                origin, "memory", text(item, "VirtualQuantity") or "0", properties
            )
            memory = units.scaled(
                origin, "memory", quantity, text(item, "AllocationUnits") or "byte * 2^20"
            )
            system.memory_mib = max(1, memory // 2**20)
        elif kind == _DISK:
            ref = _disk_of(envelope, item)
            if ref is None:
                continue
            if ref.disk_id in used:
                raise errors.OvfFormatError(origin, f"disk {ref.disk_id!r} attached twice")
            used.add(ref.disk_id)
            system.disks.append(_attached(item, ref, controllers))
        elif kind == _NIC:
            system.nics.append(dialects.nic(item, len(system.nics)))


def _resource_type(item: Element) -> int:
    value = text(item, "ResourceType")
    return int(value) if value.isdigit() and len(value) < 6 else 0


def _cpu(origin: str, item: Element, system: System) -> None:
    sockets = text(item, "num_of_sockets")
    if sockets:  # oVirt states the topology directly
        system.cpu_sockets = max(1, units.integer(origin, "num_of_sockets", sockets))
        system.cpu_cores = max(
            1, units.integer(origin, "cpu_per_socket", text(item, "cpu_per_socket") or "1")
        )
        system.cpu_threads = max(
            1, units.integer(origin, "threads_per_cpu", text(item, "threads_per_cpu") or "1")
        )
        return
    vcpus = max(1, units.integer(origin, "CPU count", text(item, "VirtualQuantity") or "1"))
    cores = units.integer(origin, "CoresPerSocket", text(item, "CoresPerSocket") or "1") or 1
    if vcpus % cores:
        cores = 1
    system.cpu_sockets, system.cpu_cores = vcpus // cores, cores


def _disk_of(envelope: _Envelope, item: Element) -> DiskRef | None:
    """The disk a drive item holds: ``ovf:/disk/ID``, ``ovf:/file/ID`` or oVirt's path."""
    resource = text(item, "HostResource")
    if not resource:
        return None  # an empty drive slot
    known = envelope.disks
    if "/file/" in resource:
        file_id = resource.rsplit("/file/", 1)[-1]
        declared = envelope.files.get(file_id)
        for ref in known.values():
            if declared is not None and ref.file == declared.href:
                return ref
        # A file attached directly has no DiskSection entry: its image gives the size.
        bare = DiskRef(file_id, None, None, None, None, None)
        return disks.with_file(envelope.origin, bare, file_id, envelope.files)
    wanted = resource.rsplit("/disk/", 1)[-1] if "/disk/" in resource else resource
    if wanted in known:
        return known[wanted]
    tail = PurePosixPath(wanted).name  # oVirt: imageGroup/imageId
    for ref in known.values():
        if tail in (ref.disk_id, PurePosixPath(ref.file or "").name):
            return ref
    name = text(item, "ElementName") or text(item, "Caption") or tail
    missing = errors.MissingFileError(
        envelope.origin,
        f"drive {name!r} holds {resource!r}, which no Disk or File of the descriptor "
        "declares (an oVirt direct LUN is not part of an export)",
    )
    return DiskRef(tail or "unknown", None, None, None, None, None, problem=missing)


def _attached(item: Element, ref: DiskRef, controllers: dict[str, Element]) -> DiskRef:
    bus = ref.bus
    parent = controllers.get(text(item, "Parent"))
    if parent is not None:
        bus = _bus(parent)
    boot = ref.boot_order
    order = text(item, "BootOrder") or text(item, "boot_order")
    if order.isdigit() and 0 < int(order) < 1000:
        boot = int(order)
    return replace(ref, bus=bus, boot_order=boot)


def _bus(controller: Element) -> str:
    kind = _resource_type(controller)
    subtype = text(controller, "ResourceSubType").lower()
    if kind == _IDE:
        return "ide"
    if kind == _SCSI:
        return "scsi"
    if "nvme" in subtype:
        return "nvme"
    if "ahci" in subtype or "sata" in subtype:
        return "sata"
    return subtype or "sata"
