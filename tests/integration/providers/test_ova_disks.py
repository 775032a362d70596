"""Reading OVA disks back: bytes through extents, qemu handles, manifest on open."""

from __future__ import annotations

import subprocess
from pathlib import Path

import ovfkit
import pytest

from ferry.proto.inventory import DiskFormat, Vm
from ferry.providers.base import DiskNotFound, DiskReader
from ferry.providers.ova import errors
from ferry.providers.ova.provider import OvaProvider

RAW_URI = "http://en.wikipedia.org/wiki/Byte"
QCOW2_URI = "http://en.wikipedia.org/wiki/Qcow2"
SPARSE_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"


def flat_descriptor(images: ovfkit.Images, extent_name: str) -> bytes:
    text = images.flat_descriptor.read_text()
    return text.replace(f'"{images.flat_extent.name}"', f'"{extent_name}"').encode()


@pytest.fixture
def area(tmp_path: Path, images: ovfkit.Images) -> Path:
    """One OVA per disk format, plus an unpacked folder with raw, qcow2 and split VMDKs."""
    root = tmp_path / "import"
    root.mkdir()
    raw = images.raw.read_bytes()
    cases = {
        "stream": (images.stream.read_bytes(), ovfkit.STREAM_URI),
        "sparse": (images.sparse.read_bytes(), SPARSE_URI),
        "qcow2": (images.qcow2.read_bytes(), QCOW2_URI),
        "raw": (raw, RAW_URI),
    }
    for name, (data, uri) in cases.items():
        ovf = ovfkit.vmware_ovf(
            [{"href": f"{name}.img", "size": len(data), "format": uri}], name=name
        )
        ovfkit.write_ova(root / f"{name}.ova", f"{name}.ovf", ovf, [(f"{name}.img", data)])
    # A monolithicFlat descriptor and its extent, both inside one OVA.
    descriptor = flat_descriptor(images, "flat-extent.bin")
    ovf = ovfkit.vmware_ovf(
        [{"href": "flat.vmdk", "size": len(descriptor), "format": SPARSE_URI}], name="flatova"
    )
    ovfkit.write_ova(
        root / "flatova.ova",
        "flatova.ovf",
        ovf,
        [("flat.vmdk", descriptor), ("flat-extent.bin", raw)],
    )
    folder = root / "folder"
    folder.mkdir()
    for name, source in (("f-raw.img", images.raw), ("f-qcow2.img", images.qcow2)):
        subprocess.run(["cp", "--sparse=always", str(source), str(folder / name)], check=True)
    (folder / "f-flat.vmdk").write_bytes(flat_descriptor(images, "f-flat-extent.bin"))
    subprocess.run(
        ["cp", "--sparse=always", str(images.raw), str(folder / "f-flat-extent.bin")], check=True
    )
    for subformat in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat"):
        ovfkit.run(
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            f"subformat={subformat}",
            str(images.raw),
            str(folder / f"{subformat}.vmdk"),
        )
    disks = [
        {
            "href": f"{sub}.vmdk",
            "size": (folder / f"{sub}.vmdk").stat().st_size,
            "format": SPARSE_URI,
        }
        for sub in ("twoGbMaxExtentSparse", "twoGbMaxExtentFlat")
    ]
    disks += [
        {"href": "f-raw.img", "size": ovfkit.SOURCE_SIZE, "format": RAW_URI},
        {"href": "f-qcow2.img", "size": images.qcow2.stat().st_size, "format": QCOW2_URI},
        {
            "href": "f-flat.vmdk",
            "size": (folder / "f-flat.vmdk").stat().st_size,
            "format": SPARSE_URI,
        },
    ]
    (folder / "multi.ovf").write_text(ovfkit.vmware_ovf(disks, name="multi"))
    return root


async def reassemble(disk: DiskReader) -> bytes:
    """Guest bytes rebuilt from the allocated extents only; holes stay zero."""
    buffer = bytearray(disk.size)
    for extent in await disk.extents():
        buffer[extent.offset : extent.offset + extent.length] = await disk.read(
            extent.offset, extent.length
        )
    return bytes(buffer)


def every_disk(vms: list[Vm]) -> list[tuple[Vm, str]]:
    return [(vm, disk.id) for vm in vms for disk in vm.disks]


async def test_every_format_reads_back_the_source_bytes_through_extents(
    area: Path, images: ovfkit.Images
) -> None:
    # Given streamOptimized, sparse, qcow2, raw and flat VMDK disks in OVAs and a folder
    provider = OvaProvider(area)
    vms = await provider.inventory()
    formats = {disk.format for vm in vms for disk in vm.disks}
    assert formats == {
        DiskFormat.VMDK_STREAM,
        DiskFormat.VMDK,
        DiskFormat.QCOW2,
        DiskFormat.RAW,
        DiskFormat.VMDK_FLAT,
    }
    assert len(every_disk(vms)) == 10

    for vm, disk_id in every_disk(vms):
        # When each disk is rebuilt from its extents
        async with provider.open_disk(vm, disk_id) as disk:
            rebuilt = await reassemble(disk)

        # Then it equals the raw source byte for byte
        assert disk.size == ovfkit.SOURCE_SIZE, (vm.id, disk_id)
        assert rebuilt == images.expected, (vm.id, disk_id)


async def test_compressed_and_sparse_formats_report_only_allocated_extents(area: Path) -> None:
    # Given a streamOptimized VMDK and a qcow2 of a disk that is ~3 % data
    provider = OvaProvider(area)
    for vm_id in ("stream/stream", "qcow2/qcow2"):
        vm = await provider.vm(vm_id)

        # When their extents are listed
        async with provider.open_disk(vm, vm.disks[0].id) as disk:
            extents = await disk.extents()

        # Then every data range of the source is covered and most of the disk is not
        covered = sum(e.length for e in extents)
        assert covered < disk.size // 8
        for offset, length, _ in ovfkit.DATA:
            assert any(
                e.offset <= offset and offset + length <= e.offset + e.length for e in extents
            )


async def test_qemu_source_converts_with_an_explicit_format(
    area: Path, images: ovfkit.Images, tmp_path: Path
) -> None:
    # Given disks inside OVA archives (no unpacking)
    provider = OvaProvider(area)
    for vm_id in ("stream/stream", "qcow2/qcow2", "raw/raw", "flatova/flatova"):
        vm = await provider.vm(vm_id)
        async with provider.open_disk(vm, vm.disks[0].id) as disk:
            source = disk.qemu_source()
            out = tmp_path / f"{vm.name}.raw"

            # When qemu-img converts from the json: description with -f
            subprocess.run(
                ["qemu-img", "convert", *source.qemu_img_args(), "-O", "raw", str(out)],
                check=True,
                capture_output=True,
            )

        # Then the format is named and the output is the source
        assert source.qemu_img_args()[:2] == ["-f", source.format]
        assert out.read_bytes() == images.expected, vm_id


async def test_nbd_uri_serves_guest_bytes_to_nbdcopy(
    area: Path, images: ovfkit.Images, tmp_path: Path
) -> None:
    # Given a streamOptimized disk in an OVA
    provider = OvaProvider(area)
    vm = await provider.vm("stream/stream")
    out = tmp_path / "copy.raw"

    # When nbdcopy reads it from the reader's NBD URI
    async with provider.open_disk(vm, "vmdisk1") as disk:
        uri = await disk.nbd_uri()
        subprocess.run(["nbdcopy", uri, str(out)], check=True, capture_output=True)

    # Then it gets the guest bytes, and the server is gone after the block
    assert out.read_bytes() == images.expected
    assert not Path(uri.split("socket=", 1)[1]).exists()


async def test_ranged_reads_cross_extents_and_stop_at_the_end(
    area: Path, images: ovfkit.Images
) -> None:
    # Given a qcow2 disk
    provider = OvaProvider(area)
    vm = await provider.vm("qcow2/qcow2")
    async with provider.open_disk(vm, "vmdisk1") as disk:
        # When reads straddle data/hole boundaries and run past the end
        middle = await disk.read(60 * 1024, 8192)
        tail = await disk.read(disk.size - 100, 4096)
        beyond = await disk.read(disk.size, 10)

    # Then they return exactly the guest bytes, short only at the end
    assert middle == images.expected[60 * 1024 : 68 * 1024]
    assert tail == images.expected[-100:]
    assert beyond == b""


async def test_manifest_mismatch_of_a_disk_fails_the_open_naming_the_file(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given an OVA whose disk differs from the manifest by one byte
    root = tmp_path / "import"
    root.mkdir()
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "web01-disk1.vmdk", "size": len(stream)}])
    members = [("web01.ovf", ovf.encode()), ("web01-disk1.vmdk", stream)]
    mf = ovfkit.manifest(members)
    tampered = bytearray(stream)
    tampered[-2000] ^= 0xFF  # inside the footer padding: still a valid image
    (root / "web01.ova").write_bytes(
        ovfkit.tar_bytes([members[0], ("web01.mf", mf), ("web01-disk1.vmdk", bytes(tampered))])
    )
    provider = OvaProvider(root)
    vm = await provider.vm("web01/web01")

    # When the disk is opened
    with pytest.raises(errors.ManifestMismatchError) as caught:
        async with provider.open_disk(vm, "vmdisk1"):
            pass

    # Then the error names the disk file; without digest checks it opens
    assert "web01-disk1.vmdk" in str(caught.value)
    async with OvaProvider(root, verify_digests=False).open_disk(vm, "vmdisk1") as disk:
        assert disk.size == ovfkit.SOURCE_SIZE


async def test_manifest_digests_are_checked_once_and_pass(area: Path, tmp_path: Path) -> None:
    # Given an OVA with a correct SHA256 manifest
    provider = OvaProvider(area)
    vm = await provider.vm("stream/stream")

    # When all digests are verified, then the disk opened twice
    await provider.verify(vm)
    async with provider.open_disk(vm, "vmdisk1") as first:
        size = first.size

    # Then nothing fails and the disk reads
    assert size == ovfkit.SOURCE_SIZE


async def test_unknown_disk_is_a_clear_error(area: Path) -> None:
    # Given a VM with one disk
    provider = OvaProvider(area)
    vm = await provider.vm("raw/raw")

    # When another disk id is opened
    with pytest.raises(DiskNotFound, match="vmdisk9"):
        async with provider.open_disk(vm, "vmdisk9"):
            pass
