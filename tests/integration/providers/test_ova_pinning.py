"""qemu tools read the files that were checked, and run bounded.

A package file is checked by name, then qemu-img and qemu-nbd are started; if
they opened the name again, a file renamed over it in between (someone else's
file, a hard link to a secret) would be what they read. They get the checked
descriptors instead. And since qemu parses hostile headers, qemu-img runs with
a CPU-time and an address-space limit, qemu-nbd with the address-space one.
"""

from __future__ import annotations

import os
from pathlib import Path

import ovfkit
import pytest
from hostile_corpus import QCOW2_URI

from ferry.proto.inventory import Status
from ferry.providers.ova.limits import DEFAULT, Limits
from ferry.providers.ova.provider import OvaProvider


def _qcow2_folder(root: Path, images: ovfkit.Images) -> Path:
    folder = root / "q"
    folder.mkdir(parents=True)
    disk = folder / "q.qcow2"
    disk.write_bytes(images.qcow2.read_bytes())
    disks = [{"href": "q.qcow2", "size": disk.stat().st_size, "format": QCOW2_URI}]
    (folder / "q.ovf").write_text(ovfkit.vmware_ovf(disks, name="q"))
    return disk


def _other_qcow2(tmp_path: Path) -> Path:
    """A qcow2 of the same size whose every byte differs from the source's."""
    raw = tmp_path / "other.raw"
    raw.write_bytes(b"\x77" * ovfkit.SOURCE_SIZE)
    other = tmp_path / "other.qcow2"
    ovfkit.run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(other))
    return other


async def test_a_file_swapped_after_the_disk_was_opened_is_never_read(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a listed qcow2 disk, opened for reading (its file checked now)
    root = tmp_path / "import"
    disk = _qcow2_folder(root, images)
    provider = OvaProvider(root)
    [vm] = await provider.inventory()
    other = _other_qcow2(tmp_path)
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        # When another file is renamed over it before qemu-nbd and qemu-img start
        swapped = disk.with_name("swap.tmp")
        swapped.write_bytes(other.read_bytes())
        os.replace(swapped, disk)

        # Then the bytes and extents read are still those of the file that was checked
        for offset, length, _ in ovfkit.DATA:
            assert await reader.read(offset, length) == images.expected[offset : offset + length]
        assert await reader.read(1024 * 1024, 4096) == bytes(4096)
        extents = await reader.extents()
        assert sum(e.length for e in extents) < ovfkit.SOURCE_SIZE  # not the all-data swap


async def test_qemu_tools_run_with_cpu_and_address_space_limits(
    tmp_path: Path, images: ovfkit.Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a qemu-img that records the limits it was started with
    bindir = tmp_path / "bin"
    bindir.mkdir()
    seen = tmp_path / "limits.txt"
    (bindir / "qemu-img").write_text(
        f'#!/bin/sh\necho "$(ulimit -t) $(ulimit -v)" >> "{seen}"\nexec /usr/bin/qemu-img "$@"\n'
    )
    (bindir / "qemu-img").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    root = tmp_path / "import"
    _qcow2_folder(root, images)
    provider = OvaProvider(root)

    # When the package is checked and its disk served
    [vm] = await provider.inventory()
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        await reader.read(0, 4096)
        await reader.extents()
        server = reader._server
        assert server is not None and server._process is not None
        limits = Path(f"/proc/{server._process.pid}/limits").read_text()

    # Then every qemu-img ran with the CPU-time and address-space limits (info, check, map)
    runs = seen.read_text().split("\n")[:-1]
    want = f"{DEFAULT.qemu_cpu_seconds} {DEFAULT.qemu_address_space_mib * 1024}"
    assert len(runs) >= 3 and set(runs) == {want}
    # And qemu-nbd with the address-space limit
    space = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    assert space.split()[3] == str(DEFAULT.qemu_address_space_mib * 1024 * 1024)


async def test_a_qemu_img_stopped_by_its_limit_refuses_the_disk_naming_the_setting(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a qcow2 package and an address-space limit too small for qemu-img
    root = tmp_path / "import"
    _qcow2_folder(root, images)
    provider = OvaProvider(root, limits=Limits(qemu_address_space_mib=16))

    # When it is listed
    [package] = await provider.packages()

    # Then the disk is refused, the reason naming the setting that stopped qemu-img
    [vm] = package.vms
    assert vm.status is Status.REJECTED
    assert "setting qemu_address_space_mib" in vm.errors[0], vm.errors
    # (and with the default limit the same package is fine)
    assert (await OvaProvider(root).packages())[0].status is Status.OK


def test_the_limit_settings_are_read_from_the_provider_settings() -> None:
    # Given a Provider's settings / When read / Then both limits are taken
    limits = Limits.from_settings({"qemu_cpu_seconds": "30", "qemu_address_space_mib": "2048"})
    assert (limits.qemu_cpu_seconds, limits.qemu_address_space_mib) == (30, 2048)
