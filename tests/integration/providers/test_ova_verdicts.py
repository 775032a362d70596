"""Every package gets a verdict, and one bad package never hides another.

The packages are written here in the producers' shapes (ovfkit) with real disks;
what is checked is what a user sees in ``ferry inventory``: each package with
its status, each VM with its facts, and each unusable disk with its reason.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import ovfkit
import pytest

from ferry.proto.inventory import Status
from ferry.providers.nbd import NbdError
from ferry.providers.ova import descriptor, errors
from ferry.providers.ova.limits import DEFAULT, Limits
from ferry.providers.ova.provider import OvaProvider

RAW_URI = "http://en.wikipedia.org/wiki/Byte"


def _good(root: Path, name: str, stream: bytes) -> None:
    ovf = ovfkit.vmware_ovf([{"href": f"{name}.vmdk", "size": len(stream)}], name=name)
    ovfkit.write_ova(root / f"{name}.ova", f"{name}.ovf", ovf, [(f"{name}.vmdk", stream)])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    area = tmp_path / "import"
    area.mkdir()
    return area


async def test_one_crashing_descriptor_never_hides_the_good_packages(
    root: Path, images: ovfkit.Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two good OVAs, one descriptor in an encoding expat does not know, and
    # one whose parse raises an exception no one foresaw
    stream = images.stream.read_bytes()
    _good(root, "aa-good", stream)
    _good(root, "zz-good", stream)
    odd = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="odd")
    odd = odd.replace('encoding="UTF-8"', 'encoding="x-mac-klingon"')
    ovfkit.write_ova(root / "encoding.ova", "e.ovf", odd, [("d.vmdk", stream)])
    _good(root, "crash", stream)
    real_parse = descriptor.parse

    def crashing(
        origin: str, data: bytes, limits: Limits = DEFAULT, configuration: str = ""
    ) -> list[descriptor.System]:
        if "crash.ova" in origin:
            raise RuntimeError("a bug nobody\nforesaw")
        return real_parse(origin, data, limits, configuration)

    monkeypatch.setattr(descriptor, "parse", crashing)

    # When the directory is listed
    provider = OvaProvider(root)
    packages = {p.id: p for p in await provider.packages()}
    vms = await provider.inventory()

    # Then the good VMs are there and each bad package has a one-line reason
    assert [vm.id for vm in vms] == ["aa-good/aa-good", "zz-good/zz-good"]
    assert {k: p.status for k, p in packages.items()} == {
        "aa-good": Status.OK,
        "crash": Status.REJECTED,
        "encoding": Status.REJECTED,
        "zz-good": Status.OK,
    }
    assert packages["encoding"].errors == [
        "unreadable XML encoding: unknown encoding: x-mac-klingon"
    ]
    [crash] = packages["crash"].errors
    assert "RuntimeError" in crash and "\n" not in crash


async def test_a_vm_with_a_missing_disk_file_is_listed_with_the_disks_reason(
    root: Path, images: ovfkit.Images
) -> None:
    # Given an unpacked export whose second disk file was not copied
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf(
        [{"href": "a.vmdk", "size": len(stream)}, {"href": "b.vmdk", "size": len(stream)}],
        name="half",
    )
    folder = root / "half"
    folder.mkdir()
    (folder / "half.ovf").write_text(ovf)
    (folder / "a.vmdk").write_bytes(stream)
    provider = OvaProvider(root)

    # When listed
    [package] = await provider.packages()

    # Then the VM is there with its facts, rejected, and only disk 2 carries an error
    [vm] = package.vms
    assert package.status is Status.REJECTED and vm.status is Status.REJECTED
    assert vm.cpu_sockets * vm.cpu_cores == 4 and len(vm.nics) == 1
    assert [bool(d.error) for d in vm.disks] == [False, True]
    assert vm.errors == [vm.disks[1].error]
    assert "vmdisk2" in vm.errors[0] and "b.vmdk" in vm.errors[0]
    assert await provider.inventory() == []
    with pytest.raises(errors.MissingFileError):
        await provider.vm("half/half/half")


async def test_a_blank_disk_is_listed_and_reads_as_zeros(root: Path, images: ovfkit.Images) -> None:
    # Given an appliance with a system disk and a data disk declared by capacity only
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "sys.vmdk", "size": len(stream)}], name="app")
    ovf = ovf.replace(
        "</DiskSection>",
        '<Disk ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="data"/>'
        "</DiskSection>",
    ).replace(
        "</VirtualHardwareSection>",
        "<Item><rasd:HostResource>ovf:/disk/data</rasd:HostResource><rasd:InstanceID>99"
        "</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType>"
        "</Item></VirtualHardwareSection>",
    )
    ovfkit.write_ova(root / "app.ova", "app.ovf", ovf, [("sys.vmdk", stream)])
    provider = OvaProvider(root)

    # When listed and the blank disk opened
    vm = await provider.vm("app/app")
    blank = next(d for d in vm.disks if d.id == "data")
    async with provider.open_disk(vm, "data") as reader:
        head = await reader.read(0, 4096)
        extents = await reader.extents()
        size = reader.size

    # Then it is a blank 4 MiB disk with no data
    assert blank.blank and blank.capacity == 4 * ovfkit.MiB == size
    assert head == b"\0" * 4096 and extents == []


async def test_unsafe_virtual_system_ids_still_give_usable_vms(
    root: Path, images: ovfkit.Images
) -> None:
    # Given a VirtualSystem id with a slash, spaces and a colon
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="web/01 db:x")
    ovfkit.write_ova(root / "odd.ova", "odd.ovf", ovf, [("d.vmdk", stream)])
    provider = OvaProvider(root)

    # When listed, looked up and read
    [vm] = await provider.inventory()
    again = await provider.vm(vm.id)
    async with provider.open_disk(again, again.disks[0].id) as reader:
        head = await reader.read(0, 512)

    # Then the id is one "<package>/<encoded id>" pair and the disk reads
    assert vm.id == "odd/web%2F01%20db%3Ax"
    assert vm.name == "web/01 db:x"
    assert head == images.expected[:512]


async def test_a_disk_without_capacity_takes_its_image_size_with_a_warning(
    root: Path, images: ovfkit.Images
) -> None:
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="nocap")
    ovf = ovf.replace('ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ', "")
    ovfkit.write_ova(root / "nocap.ova", "nocap.ovf", ovf, [("d.vmdk", stream)])
    vm = await OvaProvider(root).vm("nocap/nocap")
    assert vm.disks[0].capacity == ovfkit.SOURCE_SIZE
    assert any("declares no capacity" in w for w in vm.warnings)


async def test_bytes_that_contradict_the_declared_format_are_named(
    root: Path, images: ovfkit.Images
) -> None:
    # Given raw bytes declared a streamOptimized VMDK
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(images.expected)}], name="liar")
    ovfkit.write_ova(root / "liar.ova", "liar.ovf", ovf, [("d.vmdk", images.expected)])

    # When listed / Then the disk's error says what it is not, never calling it raw
    [package] = await OvaProvider(root).packages()
    [error] = package.vms[0].errors
    assert "not a VMDK image" in error and "is raw" not in error


async def test_a_manifest_that_skips_a_disk_rejects_it_and_no_manifest_is_a_warning(
    root: Path, images: ovfkit.Images
) -> None:
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="vm")
    members = [("vm.ovf", ovf.encode()), ("d.vmdk", stream)]
    partial = ovfkit.manifest(members[:1])
    (root / "partial.ova").write_bytes(
        ovfkit.tar_bytes([members[0], ("vm.mf", partial), members[1]])
    )
    ovfkit.write_ova(root / "bare.ova", "vm.ovf", ovf, [("d.vmdk", stream)], with_manifest=False)

    packages = {p.id: p for p in await OvaProvider(root).packages()}

    assert packages["partial"].status is Status.REJECTED
    assert "not in the manifest" in packages["partial"].vms[0].errors[0]
    assert packages["bare"].status is Status.OK
    assert any("no manifest" in w for w in packages["bare"].vms[0].warnings)


async def test_archive_member_count_and_name_length_limits(
    root: Path, images: ovfkit.Images
) -> None:
    # Given an OVA with 20 members, one of them with a 300-character name
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="vm")
    extra = [(f"note{i}.txt", b"x") for i in range(17)] + [("n" * 300, b"x")]
    (root / "many.ova").write_bytes(
        _gnu_tar([("vm.ovf", ovf.encode()), ("d.vmdk", stream), *extra])
    )

    # When read under limits below and above those / Then refused, then accepted
    async def verdict(limits: Limits) -> type[errors.OvaError] | None:
        found = await OvaProvider(root, limits=limits).scan()
        problem = found.rejected.get("many")
        return type(problem) if problem is not None else None

    assert await verdict(Limits(max_members=10)) is errors.TooManyMembersError
    assert await verdict(Limits(max_name_length=255)) is errors.UnsafeMemberError
    assert await verdict(Limits(max_members=20, max_name_length=300)) is None


async def test_descriptor_size_limit(root: Path, images: ovfkit.Images) -> None:
    stream = images.stream.read_bytes()
    _good(root, "vm", stream)
    found = await OvaProvider(root, limits=Limits(max_descriptor_bytes=1000)).scan()
    assert "max_descriptor_bytes" in found.rejected["vm"].problem
    assert not (await OvaProvider(root).scan()).rejected


async def test_a_gzip_compressed_ova_is_refused_with_what_to_do(
    root: Path, images: ovfkit.Images
) -> None:
    stream = images.stream.read_bytes()
    _good(root, "vm", stream)
    (root / "zipped.ova").write_bytes(gzip.compress((root / "vm.ova").read_bytes()))
    found = await OvaProvider(root).scan()
    assert isinstance(found.rejected["zipped"], errors.ArchiveFormatError)
    assert "gzip" in found.rejected["zipped"].problem


def _gnu_tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["qcow2", "stream"])
async def test_an_image_cut_short_is_refused_on_its_disk_in_plain_words(
    kind: str, root: Path, images: ovfkit.Images
) -> None:
    # Given an image cut in half, whose tables point past its end (qemu would read
    # the missing clusters as zeros without a word)
    whole = (images.qcow2 if kind == "qcow2" else images.stream).read_bytes()
    cut = whole[: len(whole) // 2]
    cut += b"\0" * (-len(cut) % 512)
    uri = "http://en.wikipedia.org/wiki/Qcow2" if kind == "qcow2" else ovfkit.STREAM_URI
    ovf = ovfkit.vmware_ovf([{"href": "d.img", "size": len(cut), "format": uri}], name="cut")
    ovfkit.write_ova(root / "cut.ova", "cut.ovf", ovf, [("d.img", cut)])

    # When listed
    [package] = await OvaProvider(root).packages()

    # Then the VM is there and its disk says the file is damaged or cut short
    [error] = package.vms[0].errors
    assert "vmdisk1 (d.img)" in error and "damaged or cut short" in error


class _FailingClient:
    async def read(self, offset: int, length: int) -> bytes:
        raise NbdError(22, "NbdError: server replied errno 22")

    async def close(self) -> None:
        return None


async def test_a_read_failure_names_the_disk_offset_and_problem(
    root: Path, images: ovfkit.Images
) -> None:
    # Given a listed stream VMDK whose NBD reads fail as qemu-nbd fails them
    _good(root, "vm", images.stream.read_bytes())
    provider = OvaProvider(root)
    vm = await provider.vm("vm/vm")

    # When a range is read
    async with provider.open_disk(vm, "vmdisk1") as reader:
        reader._client = _FailingClient()  # type: ignore[assignment]
        with pytest.raises(NbdError) as caught:
            await reader.read(1 << 20, 4096)

    # Then the errno is kept for the copy engine and the words say which disk, where, what
    assert caught.value.errno == 22
    text = caught.value.strerror
    assert "vm/vm:vmdisk1" in text and "offset 1048576" in text and "cut short" in text
    assert "errno" not in text


async def test_a_signed_package_with_its_descriptor_not_first_is_usable_with_warnings(
    root: Path, images: ovfkit.Images
) -> None:
    # Given an OVA whose disk comes before the descriptor, with an (unchecked) certificate
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}], name="vm")
    members = [("d.vmdk", stream), ("vm.ovf", ovf.encode()), ("vm.cert", b"not a real cert")]
    (root / "signed.ova").write_bytes(
        ovfkit.tar_bytes([*members, ("vm.mf", ovfkit.manifest(members[:2]))])
    )

    # When listed
    vm = await OvaProvider(root).vm("signed/vm")

    # Then it is usable, and both facts are warnings shown with the VM
    assert vm.status is Status.OK
    assert any("not the archive's first member" in w for w in vm.warnings)
    assert any("signed" in w for w in vm.warnings)


async def test_a_raw_disk_cut_after_listing_names_where_it_ends(
    root: Path, images: ovfkit.Images
) -> None:
    # Given a listed folder export with a raw disk, cut in half afterwards
    folder = root / "raw"
    folder.mkdir()
    ovf = ovfkit.vmware_ovf(
        [{"href": "d.img", "size": len(images.expected), "format": RAW_URI}], name="raw"
    )
    (folder / "raw.ovf").write_text(ovf)
    (folder / "d.img").write_bytes(images.expected)
    provider = OvaProvider(root)
    vm = await provider.vm("raw/raw/raw")
    os.truncate(folder / "d.img", len(images.expected) // 2)

    # When its last sector is read
    async with provider.open_disk(vm, "vmdisk1") as reader:
        with pytest.raises(NbdError) as caught:
            await reader.read(len(images.expected) - 512, 512)

    # Then the error says where the file ends and what that means, with an errno
    assert caught.value.errno is not None
    assert f"ends at byte {len(images.expected) // 2}" in caught.value.strerror
    assert "cut short" in caught.value.strerror
