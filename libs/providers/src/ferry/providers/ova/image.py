"""What a disk image really is, checked before any qemu tool opens it.

The descriptor says what a disk is; the bytes may say otherwise. A raw disk whose
first sector looks like qcow2, a qcow2 with a backing file of ``/etc/shadow``, a
VMDK descriptor whose extent is ``../../secret``: each would make qemu read outside
the import area. So the header is read here first (backing file, external data
file, descriptor extents), the qemu description is built with the format named and
``backing`` pinned to null, and ``qemu-img info`` confirms the result (it opens the
image without its backing chain). Each image lists the package files it reads
(``files``), so every qemu tool gets them as descriptors checked once
(:mod:`qemutools`), never by name.

The declared format is honoured: a disk declared raw is read as raw whatever its
first bytes look like (the raw driver never follows a header's backing file), and
a file whose bytes are not the declared VMDK or qcow2 is named for what it lacks.
A disk declared without a file is a blank volume of its capacity, served by
qemu's ``null-co`` driver reading zeros.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

from ferry.proto.inventory import Concern, ConcernCode, DiskFormat
from ferry.providers.base import QemuSource
from ferry.providers.ova import errors, qemutools
from ferry.providers.ova.disks import DiskRef
from ferry.providers.ova.limits import Limits
from ferry.providers.ova.package import BLOCK, Location, Package, open_checked, read_at

HEAD = 64 * 1024
SECTOR = 512
_VMDK_FAMILY = {DiskFormat.VMDK, DiskFormat.VMDK_STREAM, DiskFormat.VMDK_FLAT}
_EXTENT = re.compile(
    r'^(RW|RDONLY|NOACCESS)\s+(\d{1,20})\s+([A-Z]+)(?:\s+"([^"]*)"(?:\s+(\d{1,20}))?)?\s*$'
)
_QCOW2_EXTERNAL_DATA = 1 << 2
_QCOW2_DATA_FILE_EXT = 0x44415441


@dataclass(frozen=True)
class Image:
    """A checked disk image: its real format, qemu description and guest size."""

    format: DiskFormat
    source: QemuSource
    virtual_size: int
    window: Location | None  # raw guest bytes lie here verbatim (raw, flat VMDK)
    note: str = ""  # a warning for the VM: what was read differently than it looks
    files: tuple[Location, ...] = ()  # every package file qemu reads for this image


def blank(capacity: int) -> Image:
    """A disk with no content file: ``capacity`` bytes of zeros, no data extent."""
    node = {"driver": "raw", "file": {"driver": "null-co", "size": capacity, "read-zeroes": True}}
    return Image(DiskFormat.RAW, QemuSource(format="raw", options=node), capacity, None)


async def inspect(package: Package, ref: DiskRef) -> Image:
    """Check the image of ``ref`` and describe it for qemu; errors name the file."""
    if ref.file is None:
        if ref.capacity is None:
            raise errors.ImageSizeError(package.source, f"disk {ref.disk_id} has no capacity")
        return blank(ref.capacity)
    location = package.locate(ref.file)
    where = f"{package.source}[{location.name}]"
    if ref.file_size is not None and ref.file_size != location.size:
        raise errors.ImageSizeError(
            where, f"descriptor says {ref.file_size} bytes, the file has {location.size}"
        )
    head = read_at(location, 0, min(HEAD, location.size))
    if ref.declared is DiskFormat.RAW:
        image = _raw(location, where, head)
        looks = _looks_like(head)
        if looks:
            note = f"disk {ref.disk_id} is declared raw but begins like {looks}; read as raw"
            image = dataclasses.replace(image, note=note)
    else:
        image = _classify(package, location, where, head)
        _reconcile(where, ref.declared, image.format, head)
    if not image.files:
        image = dataclasses.replace(image, files=(location,))
    if image.window is None:
        image = await confirm(package, where, image)
        if image.source.format in ("qcow2", "vmdk"):
            await check_integrity(where, image, package.limits)
    if ref.capacity is not None and image.virtual_size > ref.capacity:
        raise errors.ImageSizeError(
            where,
            f"image holds {image.virtual_size} bytes, the descriptor's capacity is {ref.capacity}",
        )
    return image


def _looks_like(head: bytes) -> str:
    if head.startswith(b"QFI\xfb"):
        return "a qcow2 image"
    if head.startswith((b"KDMV", b"COWD", b"VMDK")) or head.lstrip().startswith(
        b"# Disk DescriptorFile"
    ):
        return "a VMDK image"
    return ""


def _classify(package: Package, location: Location, where: str, head: bytes) -> Image:
    if head.startswith(b"QFI\xfb"):
        _check_qcow2(location, where, head)
        node = {"driver": "qcow2", "backing": None, "file": _file_node(location)}
        return Image(DiskFormat.QCOW2, QemuSource(format="qcow2", options=node), 0, None)
    if head.startswith(b"KDMV"):
        return _sparse_vmdk(location, where, head)
    if head.startswith((b"COWD", b"VMDK")):
        raise errors.UnsupportedDiskError(where, "VMDK3/ESX sparse images are not supported")
    if head.lstrip().startswith(b"# Disk DescriptorFile"):
        return _descriptor_vmdk(package, location, where, head)
    return _raw(location, where, head)


def _reconcile(where: str, declared: DiskFormat | None, actual: DiskFormat, head: bytes) -> None:
    """The descriptor and the bytes must agree on the family of format."""
    if declared is None or declared == actual:
        return
    if declared in _VMDK_FAMILY and actual in _VMDK_FAMILY:
        return
    family = "VMDK" if declared in _VMDK_FAMILY else declared.value
    found = _looks_like(head) or "no known image format"
    raise errors.DiskFormatError(
        where, f"declared {declared.value}, but the file is not a {family} image (it holds {found})"
    )


def _file_node(location: Location) -> dict[str, Any]:
    """The image's bytes as a qemu node: the whole file, or a window into the tar."""
    node: dict[str, Any] = {"driver": "file", "filename": str(location.path)}
    if location.offset == 0 and location.size == location.path.stat().st_size:
        return node
    # The window is rounded up to whole sectors; a tar pads every member to 512
    # bytes and the archive index checked that the padding is there.
    size = -(-location.size // BLOCK) * BLOCK
    return {"driver": "raw", "offset": location.offset, "size": size, "file": node}


# -- raw ----------------------------------------------------------------------------


def _raw(location: Location, where: str, head: bytes) -> Image:
    if location.size == 0 or location.size % SECTOR:
        raise errors.DiskFormatError(
            where, f"raw image of {location.size} bytes is not whole sectors"
        )
    return _raw_window(location, location.offset, location.size)


def _raw_window(location: Location, offset: int, size: int) -> Image:
    node: dict[str, Any] = {
        "driver": "raw",
        "offset": offset,
        "size": size,
        "file": {"driver": "file", "filename": str(location.path)},
    }
    window = Location(location.name, location.path, offset, size, location.identity)
    return Image(DiskFormat.RAW, QemuSource(format="raw", options=node), size, window)


# -- qcow2 --------------------------------------------------------------------------


def _check_qcow2(location: Location, where: str, head: bytes) -> None:
    """Refuse backing files, external data files and encryption from the header."""
    if len(head) < 72:
        raise errors.DiskFormatError(where, "qcow2 header is truncated")
    version, backing_offset, backing_size = struct.unpack_from(">IQI", head, 4)
    size, crypt = struct.unpack_from(">QI", head, 24)
    if version not in (2, 3):
        raise errors.DiskFormatError(where, f"qcow2 version {version} is unknown")
    if backing_offset or backing_size:
        raise errors.UnsafeImageError(where, "qcow2 image has a backing file")
    if crypt:
        raise errors.UnsupportedDiskError(where, "qcow2 image is encrypted")
    if size > 2**63 - 1:
        raise errors.ImageSizeError(where, f"qcow2 virtual size {size} overflows")
    header_length = 72
    if version == 3:
        if len(head) < 104:
            raise errors.DiskFormatError(where, "qcow2 v3 header is truncated")
        (incompatible,) = struct.unpack_from(">Q", head, 72)
        if incompatible & _QCOW2_EXTERNAL_DATA:
            raise errors.UnsafeImageError(where, "qcow2 image uses an external data file")
        (header_length,) = struct.unpack_from(">I", head, 100)
    _check_qcow2_extensions(where, head, header_length)


def _check_qcow2_extensions(where: str, head: bytes, offset: int) -> None:
    while offset + 8 <= len(head):
        kind, length = struct.unpack_from(">II", head, offset)
        if kind == 0:
            return
        if kind == _QCOW2_DATA_FILE_EXT:
            raise errors.UnsafeImageError(where, "qcow2 image names an external data file")
        offset += 8 + ((length + 7) & ~7)


# -- VMDK ---------------------------------------------------------------------------


def _sparse_vmdk(location: Location, where: str, head: bytes) -> Image:
    """Hosted sparse or streamOptimized VMDK: one file, an embedded descriptor."""
    if len(head) < 79:
        raise errors.DiskFormatError(where, "VMDK header is truncated")
    _, flags, capacity, _, desc_offset, desc_size = struct.unpack_from("<IIQQQQ", head, 4)
    (compress,) = struct.unpack_from("<H", head, 77)
    text = b""
    if desc_offset and desc_size:
        start, length = desc_offset * SECTOR, min(desc_size * SECTOR, HEAD)
        if start + length > location.size:
            raise errors.ImageSizeError(where, "embedded VMDK descriptor lies beyond the file")
        text = read_at(location, start, length)
    descriptor = _descriptor_fields(where, text.split(b"\x00", 1)[0])
    if (
        descriptor.get("parentFileNameHint")
        or descriptor.get("parentcid", "ffffffff") != "ffffffff"
    ):
        raise errors.UnsafeImageError(where, "VMDK image has a parent (backing) disk")
    stream = descriptor.get("createType") == "streamOptimized" or (
        compress == 1 and flags & 1 << 16
    )
    fmt = DiskFormat.VMDK_STREAM if stream else DiskFormat.VMDK
    node = {"driver": "vmdk", "backing": None, "file": _file_node(location)}
    if capacity * SECTOR > 2**63 - 1:
        raise errors.ImageSizeError(where, f"VMDK capacity of {capacity} sectors overflows")
    return Image(fmt, QemuSource(format="vmdk", options=node), 0, None)


def _descriptor_fields(where: str, text: bytes) -> dict[str, str]:
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.DiskFormatError(where, "VMDK descriptor is not text") from None
    fields: dict[str, str] = {}
    for line in decoded.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#"):
            name = key.strip()
            fields[name.lower() if name.lower() == "parentcid" else name] = value.strip().strip('"')
    return fields


def _descriptor_vmdk(package: Package, location: Location, where: str, head: bytes) -> Image:
    """A text descriptor plus extent files (monolithicFlat, split sparse)."""
    if location.size > HEAD:
        raise errors.DiskFormatError(where, "VMDK descriptor file is too large")
    fields = _descriptor_fields(where, head)
    if fields.get("parentFileNameHint") or fields.get("parentcid", "ffffffff") != "ffffffff":
        raise errors.UnsafeImageError(where, "VMDK descriptor has a parent (backing) disk")
    extents = _extents(package, where, head.decode("utf-8"))
    if not extents:
        raise errors.DiskFormatError(where, "VMDK descriptor lists no extents")
    total = sum(sectors for _, sectors, _, _ in extents) * SECTOR
    if total > 2**63 - 1:
        raise errors.ImageSizeError(where, "VMDK extents overflow")
    if len(extents) == 1 and extents[0][2] == "FLAT":
        extent, sectors, _, first = extents[0]
        image = _raw_window(extent, extent.offset + first * SECTOR, sectors * SECTOR)
        return Image(
            DiskFormat.VMDK_FLAT, image.source, image.virtual_size, image.window, files=(extent,)
        )
    if location.offset != 0 or any(e.offset != 0 for e, _, _, _ in extents):
        raise errors.UnsupportedDiskError(where, "multi-extent VMDK inside an OVA archive")
    node = {"driver": "vmdk", "backing": None, "file": _file_node(location)}
    files = (location, *(extent for extent, _, _, _ in extents))
    return Image(
        DiskFormat.VMDK_FLAT, QemuSource(format="vmdk", options=node), 0, None, files=files
    )


def _extents(package: Package, where: str, text: str) -> list[tuple[Location, int, str, int]]:
    extents: list[tuple[Location, int, str, int]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith(("RW ", "RDONLY ", "NOACCESS ")):
            continue
        match = _EXTENT.match(stripped)
        if match is None:
            raise errors.DiskFormatError(where, f"bad VMDK extent line {stripped[:80]!r}")
        _, sectors_text, kind, name, first_text = match.groups()
        if kind not in ("FLAT", "SPARSE"):
            raise errors.UnsafeImageError(where, f"VMDK extent type {kind} is not a plain file")
        if not name:
            raise errors.DiskFormatError(where, "VMDK extent without a file name")
        try:
            extent = package.locate(name)
        except errors.UnsafeMemberError as exc:
            raise errors.UnsafeImageError(
                where, f"extent {name!r} leaves the package: {exc.problem}"
            ) from None
        sectors, first = int(sectors_text), int(first_text or 0)
        if kind == "FLAT" and (first + sectors) * SECTOR > extent.size:
            raise errors.ImageSizeError(
                where, f"extent {name!r} is smaller than the descriptor says"
            )
        extents.append((extent, sectors, kind, first))
    return extents


# -- confirmation by qemu-img -------------------------------------------------------


async def confirm(package: Package, where: str, image: Image) -> Image:
    """``qemu-img info`` on the exact description: no backing, no data file, real size."""
    with qemutools.pinned(image.source, image.files) as pins:
        info = await qemutools.qemu_img_json(
            where, ["info", "--output=json", *pins.args()], pins, package.limits
        )
        if not isinstance(info, dict):
            raise errors.DiskFormatError(where, "qemu-img info gave no object")
        specific = (info.get("format-specific") or {}).get("data") or {}
        _check_extent_files(where, specific.get("extents") or [], pins)
    if info.get("format") != image.source.format:
        raise errors.DiskFormatError(where, f"qemu-img sees {info.get('format')!r}")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise errors.UnsafeImageError(where, "image has a backing file")
    if specific.get("data-file"):
        raise errors.UnsafeImageError(where, "image uses an external data file")
    size = info.get("virtual-size")
    if not isinstance(size, int) or size <= 0:
        raise errors.ImageSizeError(where, f"qemu-img reports virtual size {size!r}")
    return dataclasses.replace(image, virtual_size=size)


def _check_extent_files(where: str, extents: list[dict[str, Any]], pins: qemutools.Pinned) -> None:
    """Every extent qemu opened is one of the pinned files (or our window into a tar)."""
    for extent in extents:
        name = str(extent.get("filename", ""))
        if name.startswith("json:"):
            continue  # our own window into the archive
        if name not in pins.links:
            raise errors.UnsafeImageError(where, f"extent {name!r} is outside the package")


async def check_integrity(where: str, image: Image, limits: Limits) -> None:
    """Refuse a qcow2 or VMDK whose tables point past its end (a cut or damaged file).

    qemu reads such clusters as zeros without a word, so a truncated upload would
    migrate as a disk with holes; ``qemu-img check`` reads only the metadata.
    Exit 3 (leaked clusters) is harmless to a reader; 0 is clean.
    """
    with qemutools.pinned(image.source, image.files) as pins:
        code, _, err = await qemutools.qemu_img(where, ["check", *pins.args()], pins, limits)
    if code in (0, 3):
        return
    lines = err.decode(errors="replace").strip().splitlines()
    first = next((line for line in lines if line.startswith("ERROR")), lines[0] if lines else "")
    detail = first.removeprefix("ERROR:").strip()[:200]
    raise errors.DiskFormatError(
        where,
        f"the {image.format.value} image is damaged or cut short"
        + (f" ({detail})" if detail else ""),
    )


async def holds_data(where: str, image: Image, limits: Limits) -> bool:
    """Whether any byte of the guest disk may be non-zero (False only when sure it is not).

    A blank disk holds none; a raw window holds none when the file has no data in
    it (``SEEK_DATA``); any other image when ``qemu-img map`` lists no data.
    """
    if not image.files:
        return False
    if image.window is not None:
        window = image.window
        fd = open_checked(window)
        try:
            found = os.lseek(fd, window.offset, os.SEEK_DATA)
        except OSError as exc:
            return exc.errno != errno.ENXIO  # ENXIO: no data after the window's start
        finally:
            os.close(fd)
        return found < window.offset + window.size
    with qemutools.pinned(image.source, image.files) as pins:
        rows = await qemutools.qemu_img_json(
            where, ["map", "--output=json", *pins.args()], pins, limits
        )
    return any(row.get("data") for row in rows)


async def nothing_to_convert(disks: list[tuple[str, Image]], limits: Limits) -> list[Concern]:
    """A concern when no disk (by id, in order) holds a byte of data; else none.

    Disks are looked at in order, so a VM whose first disk holds data costs one check.
    """
    for disk_id, image in disks:
        if await holds_data(f"disk {disk_id}", image, limits):
            return []
    return [
        Concern(
            code=ConcernCode.UNSUPPORTED,
            message="every disk of the VM is empty (blank, or holding only zeros): there is "
            "no operating system to convert",
        )
    ]
