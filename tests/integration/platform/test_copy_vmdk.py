"""The in-process streamOptimized VMDK decoder against qemu's reading of the same files.

Every image is made by ``qemu-img convert`` and every expectation is what
qemu-img itself reads from it (its raw conversion, hashed by the reference
definition), so the decoder is checked against qemu, not against itself.
"""

from __future__ import annotations

import random
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from ferry.platform import errors, images
from ferry.platform.copy import checksum, engine, sink, source, vmdk
from ferry.proto.inventory import DiskFormat

KiB = 1024
MiB = 1024 * KiB


def make_raw(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 11) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            # half random, half a compressible pattern: real grains are both
            f.write(rng.randbytes(length // 2) + bytes(range(256)) * (length // 2 // 256 + 1))
    with path.open("r+b") as f:
        f.truncate(size)
    return path


def to_vmdk(raw: Path, out: Path, subformat: str = "streamOptimized") -> Path:
    subprocess.run(
        [
            *("qemu-img", "convert", "-q", "-f", "raw", "-O", "vmdk"),
            *("-o", f"subformat={subformat}", str(raw), str(out)),
        ],
        check=True,
    )
    return out


def qemu_digest(image: Path, tmp: Path) -> str:
    out = tmp / f"ref-{image.name}.raw"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "vmdk", "-O", "raw", str(image), str(out)], check=True
    )
    return checksum.of_bytes(out.read_bytes())


def copy(image: Path, tmp: Path) -> engine.Result:
    src = source.open_source(images.ImageRef(path=str(image), format=DiskFormat.VMDK_STREAM))
    try:
        target = sink.open_sink(str(tmp / "out.raw"), "raw", src.size)
        return engine.copy(src, target, tmp / "state")
    finally:
        src.close()


GD_AT_END = 0xFFFFFFFFFFFFFFFF


@pytest.fixture(params=["isal", "zlib"])
def inflater(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each decoding test runs with ISA-L (the default) and with the zlib fallback."""
    if request.param == "zlib":
        monkeypatch.setattr(vmdk, "_INFLATE", zlib)
        monkeypatch.setattr(vmdk, "_INFLATE_ERRORS", (zlib.error,))
    return str(request.param)


def test_grains_are_inflated_with_isal_when_it_is_installed() -> None:
    # isal is a locked dependency: a broken install must not fall back silently
    assert vmdk._INFLATE.__name__ == "isal.isal_zlib"


def directory_offset(data: bytes) -> int:
    """File offset of the grain directory, from the header or (if "at end") the footer."""
    gd_sector = struct.unpack_from("<Q", data, 56)[0]
    if gd_sector == GD_AT_END:
        gd_sector = struct.unpack_from("<Q", data, len(data) - 1024 + 56)[0]
    return int(gd_sector) * 512


def grain_table_entries(image: Path) -> tuple[int, list[int]]:
    """(file offset of the first grain table, its entries)."""
    data = image.read_bytes()
    first_table = struct.unpack_from("<I", data, directory_offset(data))[0] * 512
    return first_table, list(struct.unpack_from("<512I", data, first_table))


def move_header_to_footer(image: Path) -> Path:
    """Make the VMware layout: header says "directory at end", a footer says where."""
    data = bytearray(image.read_bytes())
    header = bytes(data[:512])
    data[56:64] = struct.pack("<Q", GD_AT_END)
    footer_marker = struct.pack("<QII", 0, 0, 3).ljust(512, b"\0")
    end_of_stream = bytes(512)
    image.write_bytes(bytes(data) + footer_marker + header + end_of_stream)
    return image


@pytest.mark.parametrize(
    ("size", "layout"),
    [
        (40 * MiB, [(0, 64 * KiB), (3 * MiB + 4096, 1500 * KiB), (9 * MiB, 5 * MiB)]),
        # a size that is not a whole number of grains, data in the last, short grain
        (33 * MiB + 3 * 512, [(MiB, 2 * MiB), (33 * MiB - 4096, 4096 + 3 * 512)]),
        # more than one grain table (each covers 32 MiB)
        (100 * MiB, [(31 * MiB, 2 * MiB), (70 * MiB, 700), (99 * MiB, MiB)]),
    ],
)
def test_stream_vmdk_is_decoded_in_process_exactly_as_qemu_reads_it(
    tmp_path: Path, size: int, layout: list[tuple[int, int]], inflater: str
) -> None:
    # Given a streamOptimized VMDK made by qemu-img
    image = to_vmdk(make_raw(tmp_path / "d.raw", size, layout), tmp_path / "d.vmdk")
    # When it is opened as a source
    src = source.open_source(images.ImageRef(path=str(image), format=DiskFormat.VMDK_STREAM))
    # Then it is decoded in-process (no qemu-nbd), with the disk's size
    assert isinstance(src, vmdk.VmdkStreamSource)
    assert src.size == size
    src.close()
    # And a copy's digests equal qemu-img's own reading of the file
    result = copy(image, tmp_path)
    assert result.source.digest == result.target.digest == qemu_digest(image, tmp_path)


def test_directory_found_through_the_footer_like_vmware_writes_it(tmp_path: Path) -> None:
    # Given a streamOptimized VMDK whose header defers to a footer (VMware's layout)
    raw = make_raw(tmp_path / "d.raw", 24 * MiB, [(2 * MiB, 3 * MiB), (20 * MiB, 64 * KiB)])
    image = move_header_to_footer(to_vmdk(raw, tmp_path / "d.vmdk"))
    src = source.open_source(images.ImageRef(path=str(image), format=DiskFormat.VMDK_STREAM))
    assert isinstance(src, vmdk.VmdkStreamSource)
    src.close()
    # When copied, the result is what qemu reads from the same file
    assert copy(image, tmp_path).target.digest == qemu_digest(image, tmp_path)


def test_other_vmdk_shapes_are_left_to_qemu(tmp_path: Path) -> None:
    # Given an uncompressed monolithicSparse VMDK (not the streamed shape)
    raw = make_raw(tmp_path / "d.raw", 16 * MiB, [(MiB, 3 * MiB)])
    image = to_vmdk(raw, tmp_path / "sparse.vmdk", "monolithicSparse")
    # When opened, qemu reads it, and the copy is still exact
    src = source.open_source(images.ImageRef(path=str(image), format=DiskFormat.VMDK))
    assert isinstance(src, source.QemuImageSource)
    src.close()
    assert copy(image, tmp_path).target.digest == qemu_digest(image, tmp_path)


def test_damaged_grain_is_a_source_io_error(tmp_path: Path, inflater: str) -> None:
    # Given a streamOptimized VMDK with one byte flipped inside a compressed grain
    image = to_vmdk(make_raw(tmp_path / "d.raw", 8 * MiB, [(0, 2 * MiB)]), tmp_path / "d.vmdk")
    _, entries = grain_table_entries(image)
    at = entries[3] * 512 + 12 + 40
    with image.open("r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x55]))
    # When copied, the grain's check fails with a precise error (nothing is guessed)
    with pytest.raises(errors.SourceIOError, match="grain at file offset"):
        copy(image, tmp_path)


def test_grain_outside_the_file_is_refused(tmp_path: Path) -> None:
    # Given a grain table entry pointing far past the end of the file
    image = to_vmdk(make_raw(tmp_path / "d.raw", 8 * MiB, [(0, MiB)]), tmp_path / "d.vmdk")
    table, _ = grain_table_entries(image)
    with image.open("r+b") as f:
        f.seek(table + 4)
        f.write(struct.pack("<I", 0x7FFFFFF0))
    # When copied, it is an error, and nothing is read beyond the file
    with pytest.raises(errors.CopyError, match=r"outside the file|damaged"):
        copy(image, tmp_path)
