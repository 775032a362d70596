"""The copy workload reads the OVA files its provider checked, or nothing.

The OVA provider checks a package's files by name (regular, one link, inside the
import folder) when it opens a disk; the copy runs later in its own workload
process and opens the files again. Between the two, a file can be swapped for a
hard link or a symlink to a file outside the area, or another file renamed over
it. Each test swaps one disk file of an unpacked folder for a canary after the
provider opened the disk and before the copy, and shows that the copy is refused
with a reason naming the file, and that no byte of the canary reaches the target.
The disks cover each way the workload reads: raw bytes with ``pread`` (a raw file,
a flat VMDK's extent) and qemu-nbd over an option tree (a qcow2; a split sparse
VMDK, whose extent files qemu opens itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgspec
import ovfkit  # the provider tests' package writer (on the path by conftest)
import pytest
import volume_harness

from ferry.platform import errors
from ferry.platform.copy import checksum
from ferry.platform.kubernetes import fill
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import LocalSettings
from ferry.platform.volumes import VolumeRequest
from ferry.proto.inventory import Vm, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.providers.ova.provider import OvaProvider
from ferry.volume_service.images import image_ref

RAW_URI = "http://en.wikipedia.org/wiki/Byte"
QCOW2_URI = "http://en.wikipedia.org/wiki/Qcow2"
SPARSE_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"
MARK = b"FERRY-CANARY-8b!"  # 16 bytes: found at every 16th byte of a canary's data
SPLIT = "twoGbMaxExtentSparse"
MiB = 1024 * 1024

# disk (by file name in the package) -> the package file the test swaps
SWAPPED = {
    "d-raw.img": "d-raw.img",  # raw: pread of the file
    "d-flat.vmdk": "d-flat-extent.bin",  # flat VMDK: pread of its extent
    "d-qcow2.img": "d-qcow2.img",  # qcow2: qemu-nbd over the option tree
    f"{SPLIT}.vmdk": f"{SPLIT}-s001.vmdk",  # split sparse: an extent qemu opens by itself
}


def _convert(raw: Path, target: Path, fmt: str, subformat: str = "") -> None:
    options = ["-o", f"subformat={subformat}"] if subformat else []
    ovfkit.run("qemu-img", "convert", "-f", "raw", "-O", fmt, *options, str(raw), str(target))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ovfkit.Images:
    return ovfkit.make_images(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per swapped file, a file of the same shape whose every data byte is the canary's."""
    base = tmp_path_factory.mktemp("canary")
    raw = base / "canary.raw"
    raw.write_bytes(MARK * (ovfkit.SOURCE_SIZE // len(MARK)))
    _convert(raw, base / "canary.qcow2", "qcow2")
    _convert(raw, base / f"{SPLIT}.vmdk", "vmdk", SPLIT)
    return {
        "d-raw.img": raw,
        "d-flat-extent.bin": raw,
        "d-qcow2.img": base / "canary.qcow2",
        f"{SPLIT}-s001.vmdk": base / f"{SPLIT}-s001.vmdk",
    }


@pytest.fixture
def package(tmp_path: Path, images: ovfkit.Images) -> Path:
    """An unpacked OVA folder with a raw, a flat VMDK, a qcow2 and a split sparse disk."""
    folder = tmp_path / "import" / "pkg"
    folder.mkdir(parents=True)
    shutil.copyfile(images.raw, folder / "d-raw.img")
    shutil.copyfile(images.qcow2, folder / "d-qcow2.img")
    text = images.flat_descriptor.read_text()
    (folder / "d-flat.vmdk").write_text(
        text.replace(f'"{images.flat_extent.name}"', '"d-flat-extent.bin"')
    )
    shutil.copyfile(images.raw, folder / "d-flat-extent.bin")
    _convert(images.raw, folder / f"{SPLIT}.vmdk", "vmdk", SPLIT)
    formats = {"d-raw.img": RAW_URI, "d-qcow2.img": QCOW2_URI}
    disks = [
        {
            "href": name,
            "size": (folder / name).stat().st_size,
            "format": formats.get(name, SPARSE_URI),
        }
        for name in SWAPPED
    ]
    (folder / "pkg.ovf").write_text(ovfkit.vmware_ovf(disks, name="pkg"))
    return folder


def _hard_link(disk: Path, canary: Path, scratch: Path) -> None:
    outside = scratch / "outside.bin"
    shutil.copyfile(canary, outside)
    disk.unlink()
    os.link(outside, disk)


def _symlink(disk: Path, canary: Path, scratch: Path) -> None:
    disk.unlink()
    disk.symlink_to(canary)


def _renamed_over(disk: Path, canary: Path, scratch: Path) -> None:
    other = disk.with_name(disk.name + ".tmp")
    shutil.copyfile(canary, other)
    os.replace(other, disk)  # a regular file with one link, but not the one checked


SWAPS: dict[str, Callable[[Path, Path, Path], None]] = {
    "hard-link": _hard_link,
    "symlink": _symlink,
    "renamed-over": _renamed_over,
}


def _request(vm: Vm, disk_id: str, capacity: int) -> VolumeRequest:
    return VolumeRequest(
        namespace="ferry-test",
        migration="mig-1",
        vm=vm.id,
        vm_name=vm.name,
        disk_id=disk_id,
        capacity=capacity,
        source=VolumeSource.IMPORTER,
        target=VolumeTarget(
            disk_id=disk_id,
            storage_class="standard",
            volume_mode=VolumeMode.FILESYSTEM,
            access_modes=["ReadWriteOnce"],
            format="raw",
        ),
    )


def _disk_of(vm: Vm, href: str) -> str:
    """The id of the disk whose package file is ``href``, by its position in the OVF."""
    return vm.disks[list(SWAPPED).index(href)].id


def _holds_canary(root: Path) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and MARK in path.read_bytes():
            found.append(path)
    return found


@pytest.mark.parametrize("swap", list(SWAPS))
@pytest.mark.parametrize("href", list(SWAPPED))
async def test_a_disk_file_swapped_before_the_copy_is_refused_and_no_canary_byte_is_copied(
    tmp_path: Path, package: Path, canaries: dict[str, Path], href: str, swap: str
) -> None:
    # Given a listed disk of an unpacked OVA, opened by its provider (files checked now)
    provider = OvaProvider(package.parent)
    [vm] = await provider.inventory()
    disk_id = _disk_of(vm, href)
    store = tmp_path / "data"
    platform = LocalVolumes(LocalSettings(storage_root=store))
    async with provider.open_disk(vm, disk_id) as reader:
        source = image_ref(reader.qemu_source())
        volume = await platform.ensure_volume(_request(vm, disk_id, reader.size))
        # When one of its files is swapped for the canary outside the area
        target = package / SWAPPED[href]
        SWAPS[swap](target, canaries[SWAPPED[href]], tmp_path)

        # and the copy workload runs
        failure: Exception | None = None
        try:
            await platform.import_disk(volume, source)
        except Exception as exc:
            failure = exc
    # Then no byte of the canary reached the target (or anything else Ferry wrote)
    assert _holds_canary(store) == []
    # And the copy was refused, permanently, naming the file and what changed
    assert isinstance(failure, errors.InvalidSourceError), failure
    assert failure.permanent
    reason = failure.reason
    assert SWAPPED[href] in reason and "changed after its provider checked it" in reason, reason
    assert "nothing was copied" in reason


@pytest.mark.parametrize("href", list(SWAPPED))
async def test_the_pinned_disk_copies_exactly_the_checked_bytes(
    tmp_path: Path, package: Path, images: ovfkit.Images, href: str
) -> None:
    # Given the same disks, unchanged
    provider = OvaProvider(package.parent)
    [vm] = await provider.inventory()
    disk_id = _disk_of(vm, href)
    platform = LocalVolumes(LocalSettings(storage_root=tmp_path / "data"))
    async with provider.open_disk(vm, disk_id) as reader:
        source = image_ref(reader.qemu_source())
        # (the workload is told which files were checked, as device and inode)
        assert {pin.name for pin in source.pins} >= {SWAPPED[href]}
        volume = await platform.ensure_volume(_request(vm, disk_id, reader.size))
        # When copied by the workload
        copy = await platform.import_disk(volume, source)
    # Then the target holds exactly the source's bytes
    assert copy.source.digest == copy.target.digest == checksum.of_bytes(images.expected)
    done = await platform.get_volume("ferry-test", volume.name)
    assert done is not None
    assert Path(done.path).read_bytes()[: ovfkit.SOURCE_SIZE] == images.expected


@pytest.mark.parametrize("swap", list(SWAPS))
@pytest.mark.parametrize("raw", [True, False], ids=["raw-member", "stream-vmdk-member"])
async def test_an_ova_archive_swapped_before_the_copy_is_refused(
    tmp_path: Path, raw: bool, swap: str
) -> None:
    # Given a disk inside an OVA archive (raw bytes read in place, or a VMDK that
    # qemu-nbd decodes from a window of the archive), opened by its provider
    ova = await volume_harness.make_ova(tmp_path / "import", size=4 * MiB, raw=raw)
    canary = tmp_path / "canary.ova"
    canary.write_bytes(MARK * (ova.path.stat().st_size // len(MARK) + 1))
    provider = OvaProvider(ova.folder)
    store = tmp_path / "data"
    platform = LocalVolumes(LocalSettings(storage_root=store))
    (disk,) = ova.vm.disks
    async with provider.open_disk(ova.vm, disk.id) as reader:
        source = image_ref(reader.qemu_source())
        volume = await platform.ensure_volume(_request(ova.vm, disk.id, reader.size))
        # When the archive is swapped for the canary, and the copy runs
        SWAPS[swap](ova.path, canary, tmp_path)
        failure: Exception | None = None
        try:
            await platform.import_disk(volume, source)
        except Exception as exc:
            failure = exc
    # Then nothing of the canary was copied, and the archive is named as changed
    assert _holds_canary(store) == []
    assert isinstance(failure, errors.InvalidSourceError), failure
    assert ova.path.name in failure.reason and "changed after" in failure.reason, failure.reason


@pytest.mark.parametrize("swap", ["hard-link", "renamed-over"])
async def test_the_populator_pods_program_applies_the_same_check(
    tmp_path: Path, package: Path, canaries: dict[str, Path], swap: str
) -> None:
    # Given the job a populator pod gets (its Secret's job.json), for a pinned raw disk
    provider = OvaProvider(package.parent)
    [vm] = await provider.inventory()
    target = tmp_path / "claim"
    target.mkdir()
    job = tmp_path / "job.json"
    async with provider.open_disk(vm, _disk_of(vm, "d-raw.img")) as reader:
        source = image_ref(reader.qemu_source())
        state = tmp_path / "state"
        state.mkdir()
        fields = {"target": str(target), "block": False, "capacity": reader.size}
        job.write_bytes(
            msgspec.json.encode(fill.Job(source=source, state_dir=str(state), **fields))
        )
        # When the disk file is swapped and the pod's program runs on the job
        SWAPS[swap](package / "d-raw.img", canaries["d-raw.img"], tmp_path)
        done = subprocess.run(
            [sys.executable, "-m", "ferry.platform.kubernetes.fill", str(job)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    # Then it fails for good (another pod would find the same file: no retry) with the
    # reason as its termination message, and copied nothing
    assert done.returncode == fill.PERMANENT, done.stdout
    assert "d-raw.img" in done.stderr and "changed after its provider checked it" in done.stderr
    assert _holds_canary(target) == []
