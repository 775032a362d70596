"""Builders for real-shaped OVA/OVF packages with real disks made by qemu-img.

The descriptors come from ``ovftexts`` (re-exported here, so tests name one module).

The OVF texts follow what the three exporters actually write (namespaces, section
shapes, units, where MACs and firmware live); the disks are real images converted
from one raw source, so bytes read back can be compared with that source.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ovftexts import (
    EPASD,
    OVF1,
    OVF2,
    RASD,
    SASD,
    STREAM_URI,
    VBOX,
    VMW,
    VSSD,
    XSI,
    appliance_ovf,
    ovirt_ovf,
    virtualbox_ovf,
    vmware_ovf,
)

__all__ = [
    "DATA",
    "EPASD",
    "OVF1",
    "OVF2",
    "RASD",
    "SASD",
    "SOURCE_SIZE",
    "STREAM_URI",
    "VBOX",
    "VMW",
    "VSSD",
    "XSI",
    "Images",
    "MiB",
    "appliance_ovf",
    "make_images",
    "manifest",
    "ovirt_ovf",
    "run",
    "tar_bytes",
    "virtualbox_ovf",
    "vmware_ovf",
    "write_ova",
]

MiB = 1024 * 1024
SOURCE_SIZE = 8 * MiB
# (offset, length, byte) ranges of the source disk that hold data; the rest is zeros.
DATA = [(0, 64 * 1024, 0xA5), (3 * MiB, 192 * 1024, 0x5A), (SOURCE_SIZE - 4096, 4096, 0x3C)]


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Images:
    """One raw source disk and the same content in every supported format."""

    raw: Path
    stream: Path
    sparse: Path
    qcow2: Path
    flat_descriptor: Path
    flat_extent: Path
    expected: bytes = field(repr=False, default=b"")


def make_images(directory: Path) -> Images:
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "source.raw"
    with raw.open("wb") as f:
        f.truncate(SOURCE_SIZE)
        for offset, length, value in DATA:
            f.seek(offset)
            f.write(bytes([value]) * length)
    stream = directory / "disk-stream.vmdk"
    sparse = directory / "disk-sparse.vmdk"
    qcow2 = directory / "disk.qcow2"
    flat = directory / "disk-flat-desc.vmdk"
    run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        str(raw),
        str(stream),
    )
    run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        str(raw),
        str(sparse),
    )
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        str(raw),
        str(flat),
    )
    return Images(
        raw, stream, sparse, qcow2, flat, directory / "disk-flat-desc-flat.vmdk", raw.read_bytes()
    )


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest(
    members: list[tuple[str, bytes]], algorithm: str = "SHA256", vbox: bool = False
) -> bytes:
    lines = []
    for name, data in members:
        digest = hashlib.new(algorithm.lower(), data).hexdigest()
        lines.append(
            f"{algorithm} ({name}) = {digest}" if vbox else f"{algorithm}({name})= {digest}"
        )
    return ("\n".join(lines) + "\n").encode()


def write_ova(
    path: Path,
    ovf_name: str,
    ovf: str,
    files: list[tuple[str, bytes]],
    *,
    with_manifest: bool = True,
    algorithm: str = "SHA256",
    vbox: bool = False,
) -> Path:
    """An OVA as exporters lay it out: descriptor first, manifest, then the disks."""
    members = [(ovf_name, ovf.encode()), *files]
    if with_manifest:
        mf = manifest(members, algorithm, vbox)
        members.insert(1, (ovf_name[:-4] + ".mf", mf))
    path.write_bytes(tar_bytes(members))
    return path


# -- OVF texts --------------------------------------------------------------------
