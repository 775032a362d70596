"""From a provider's open disk to the platform's ``ImageRef``.

The transfer runs in a workload process, so the disk has to be described, not
handed over. A provider describes every disk as a qemu option tree with the
format named (:class:`~ferry.providers.base.QemuSource`). When that tree is a
plain window of raw bytes in a file (a raw disk or a flat VMDK extent inside an
OVA) the description becomes a raw ``ImageRef`` at an offset, which the data
path reads with ``pread`` instead of through qemu-nbd; anything else keeps its
option tree. The file the tree reads is named too, so the copy's resume
identity changes when the source file does.
"""

from __future__ import annotations

from typing import Any

from ferry.platform.images import ImageRef, from_qemu_source
from ferry.proto.inventory import DiskFormat
from ferry.providers.base import QemuSource

_WINDOW_KEYS = {"driver", "offset", "size", "file"}


def image_ref(qemu: QemuSource) -> ImageRef:
    """The platform's description of the disk ``qemu`` describes."""
    window = _raw_window(qemu)
    if window is not None:
        path, offset, size = window
        return ImageRef(path=path, format=DiskFormat.RAW, offset=offset, size=size, pins=qemu.pins)
    return from_qemu_source(qemu, path=file_of(qemu.options))


def file_of(options: dict[str, Any]) -> str:
    """The host file at the bottom of a qemu option tree ('' when there is none)."""
    node: Any = options
    while isinstance(node, dict):
        if node.get("driver") == "file" and isinstance(node.get("filename"), str):
            return str(node["filename"])
        node = node.get("file")
    return ""


def _raw_window(qemu: QemuSource) -> tuple[str, int, int | None] | None:
    """(file, offset, size) when the disk is raw bytes at a place in one file."""
    if qemu.format != "raw":
        return None
    node = qemu.options
    if node.get("driver") == "file" and isinstance(node.get("filename"), str):
        return str(node["filename"]), 0, None
    if node.get("driver") != "raw" or not set(node) <= _WINDOW_KEYS:
        return None
    inner = node.get("file")
    if not isinstance(inner, dict) or set(inner) != {"driver", "filename"}:
        return None
    if inner["driver"] != "file" or not isinstance(inner["filename"], str):
        return None
    offset, size = node.get("offset", 0), node.get("size")
    if not isinstance(offset, int) or (size is not None and not isinstance(size, int)):
        return None
    return str(inner["filename"]), offset, size
