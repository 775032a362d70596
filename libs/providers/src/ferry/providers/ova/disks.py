"""The References and DiskSection of a descriptor: which disks exist, and their files.

A disk's own problem (a delta disk, a compressed or chunked file, a file the
package does not hold, no capacity) is kept on that disk as ``problem``, so the
VM is still listed with its facts and that disk's reason; only a descriptor that
is malformed as a whole, or names a file outside the package, rejects it all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from xml.etree.ElementTree import Element

from ferry.proto.inventory import DiskFormat
from ferry.providers.ova import errors, units
from ferry.providers.ova.limits import Limits
from ferry.providers.ova.ovfxml import attr, children, sections


@dataclass(frozen=True)
class FileRef:
    """One ``References/File``: a package file and what the descriptor claims of it."""

    id: str
    href: str
    size: int | None
    compression: str = ""
    chunk_size: int | None = None


@dataclass(frozen=True)
class DiskRef:
    """One disk of a VirtualSystem, before its image has been looked at."""

    disk_id: str
    file: str | None  # package file name; None for a disk with no content (blank)
    file_size: int | None  # what References claims
    capacity: int | None  # None: the descriptor gives none (the image's size is used)
    populated: int | None
    declared: DiskFormat | None  # from the format URI / oVirt volume-format
    bus: str = ""
    boot_order: int | None = None
    problem: errors.OvaError | None = None  # why this disk cannot be used

    def with_problem(self, problem: errors.OvaError) -> DiskRef:
        return replace(self, problem=self.problem or problem)


def references(origin: str, root: Element, limits: Limits) -> dict[str, FileRef]:
    files: dict[str, FileRef] = {}
    for refs in sections(root, "References"):
        for item in children(refs, "File"):
            file_id, href = attr(item, "id"), attr(item, "href")
            if not file_id or not href:
                raise errors.OvfFormatError(origin, "a File without ovf:id or ovf:href")
            if len(href) > limits.max_name_length:
                raise errors.UnsafeMemberError(
                    origin,
                    f"file reference longer than {limits.max_name_length} characters "
                    "(setting max_name_length)",
                )
            if "://" in href or href.startswith("/"):
                raise errors.UnsafeMemberError(origin, f"file reference {href!r} is not local")
            size = attr(item, "size")
            chunk = attr(item, "chunkSize")
            if file_id in files:
                raise errors.OvfFormatError(origin, f"file id {file_id!r} declared twice")
            files[file_id] = FileRef(
                id=file_id,
                href=href,
                size=units.integer(origin, f"size of {href}", size) if size is not None else None,
                compression=(attr(item, "compression") or "").strip().lower(),
                chunk_size=units.integer(origin, f"chunkSize of {href}", chunk) if chunk else None,
            )
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


def disk_section(
    origin: str, root: Element, files: dict[str, FileRef], properties: dict[str, str]
) -> dict[str, DiskRef]:
    disks: dict[str, DiskRef] = {}
    for section in sections(root, "DiskSection"):
        for item in children(section, "Disk"):
            ref = _disk(origin, item, files, properties)
            if ref.disk_id in disks:
                raise errors.OvfFormatError(origin, f"disk id {ref.disk_id!r} declared twice")
            disks[ref.disk_id] = ref
    return disks


def _capacity(origin: str, disk_id: str, item: Element, properties: dict[str, str]) -> int | None:
    capacity_text = attr(item, "capacity")
    if capacity_text is not None:
        what = f"capacity of disk {disk_id}"
        value = units.resolved(origin, what, capacity_text, properties)
        capacity = units.scaled(origin, what, value, attr(item, "capacityAllocationUnits"))
    elif (size_gib := attr(item, "size")) is not None:  # oVirt export domain: GiB
        capacity = units.scaled(origin, f"size of disk {disk_id}", size_gib, "byte * 2^30")
    else:
        return None
    if capacity == 0:
        raise errors.ImageSizeError(origin, f"disk {disk_id} has capacity 0")
    return capacity


def _disk(
    origin: str, item: Element, files: dict[str, FileRef], properties: dict[str, str]
) -> DiskRef:
    disk_id = attr(item, "diskId")
    if not disk_id:
        raise errors.OvfFormatError(origin, "a Disk without ovf:diskId")
    capacity = _capacity(origin, disk_id, item, properties)
    populated_text = attr(item, "populatedSize")
    populated = None
    if populated_text is not None:
        populated = units.integer(origin, f"populatedSize of disk {disk_id}", populated_text)
        if capacity is not None and populated > capacity:
            raise errors.ImageSizeError(
                origin, f"disk {disk_id}: populatedSize {populated} exceeds capacity {capacity}"
            )
    interface = (attr(item, "disk-interface") or "").lower()
    boot = (attr(item, "boot") or "").lower() == "true"
    ref = DiskRef(
        disk_id=disk_id,
        file=None,
        file_size=None,
        capacity=capacity,
        populated=populated,
        declared=declared_format(attr(item, "format") or "", attr(item, "volume-format")),
        bus=_ovirt_bus(interface),
        boot_order=1 if boot else None,
    )
    file_ref = attr(item, "fileRef")
    if file_ref:
        ref = with_file(origin, ref, file_ref, files)
    elif capacity is None:
        ref = ref.with_problem(
            errors.ImageSizeError(
                origin,
                f"disk {disk_id} has neither a file nor a capacity "
                "(an oVirt direct LUN is not part of an export)",
            )
        )
    parent = attr(item, "parentRef")
    if parent:
        ref = ref.with_problem(
            errors.UnsupportedDiskError(
                origin,
                f"disk {disk_id} is a delta of disk {parent} (ovf:parentRef); "
                "export the VM with its snapshots consolidated into full disks",
            )
        )
    return ref


def with_file(origin: str, ref: DiskRef, file_ref: str, files: dict[str, FileRef]) -> DiskRef:
    """``ref`` with the File it refers to; oVirt's fileRef names the href, not the id."""
    found = files.get(file_ref)
    if found is None:
        by_href = [entry for entry in files.values() if entry.href == file_ref]
        found = by_href[0] if len(by_href) == 1 else None
    if found is None:
        return ref.with_problem(
            errors.MissingFileError(
                origin, f"disk {ref.disk_id} refers to file {file_ref!r}, which References lacks"
            )
        )
    ref = replace(ref, file=found.href, file_size=found.size)
    if found.compression and found.compression != "identity":
        kind = "gzip-compressed" if found.compression == "gzip" else found.compression
        ref = ref.with_problem(
            errors.UnsupportedDiskError(
                origin,
                f"disk {ref.disk_id}: file {found.href} is {kind} (ovf:compression); "
                "re-export without compression",
            )
        )
    if found.chunk_size is not None:
        ref = ref.with_problem(
            errors.UnsupportedDiskError(
                origin,
                f"disk {ref.disk_id}: file {found.href} is split in chunks of "
                f"{found.chunk_size} bytes (ovf:chunkSize); re-export as one file",
            )
        )
    return ref


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
