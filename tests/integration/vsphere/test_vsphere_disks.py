"""Reading a vSphere disk over the datastore HTTP path, by range and as an NBD export."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim
from vcsimkit import copy_to_raw, datastore_dir, find_vm, run

from ferry.providers.nbd import AsyncNbdClient
from ferry.providers.vsphere.disks import DatastoreFileMissing
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.volume_service.images import image_ref

MIB = 1024 * 1024


def _guest_bytes() -> bytes:
    # Data, a hole of zeroes, data again: what a half-used disk looks like.
    return os.urandom(256 * 1024) + bytes(512 * 1024) + os.urandom(256 * 1024)


async def test_ranges_read_from_the_flat_extent(provider: VsphereProvider, admin: Any) -> None:
    # Given a powered-off VM whose 1 MiB disk holds known bytes
    vm = await provider.vm("DC0_H0_VM0")
    await provider.shutdown(vm, timeout=5)
    content = _guest_bytes()
    (datastore_dir(admin) / "DC0_H0_VM0" / "disk1-flat.vmdk").write_bytes(content)
    [disk] = vm.disks
    assert disk.capacity == MIB

    # When ranges are read, in parallel, across the hole and to the end
    async with provider.open_disk(vm, disk.id) as reader:
        parts = await asyncio.gather(
            *(reader.read(offset, 100_000) for offset in range(0, MIB, 100_000))
        )
        tail = await reader.read(MIB - 10, 100)
        extents = await reader.extents()

    # Then the guest's bytes come back, short only at the end of the disk
    assert b"".join(parts) == content
    assert tail == content[-10:]
    assert [(e.offset, e.length) for e in extents] == [(0, MIB)]


async def test_the_same_disk_as_an_nbd_export_for_the_copy_engine(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a powered-off VM whose disk holds known bytes
    vm = await provider.vm("DC0_C0_RP0_VM0")
    await provider.shutdown(vm, timeout=5)
    content = _guest_bytes()
    (datastore_dir(admin) / "DC0_C0_RP0_VM0" / "disk1-flat.vmdk").write_bytes(content)

    # When the reader serves it over NBD (nbdkit curl, the cookie in a 0600 file)
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        uri = await reader.nbd_uri()
        source = reader.qemu_source()
        socket = source.options["file"]["server"]["path"]
        client = await AsyncNbdClient.connect(socket)
        try:
            served = await client.read(0, MIB)
        finally:
            await client.close()
        cookie_mode = os.stat(os.path.join(os.path.dirname(socket), "cookie")).st_mode & 0o777

    # Then an NBD client reads the guest's bytes, and qemu is told the format
    assert uri.startswith("nbd+unix:///?socket=")
    assert served == content
    assert source.format == "raw"
    assert cookie_mode == 0o600
    assert not os.path.exists(socket)  # closed with the reader


async def test_a_datastore_path_that_404s_is_a_clear_reason(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a VM whose disk file is gone from the datastore
    vm = await provider.vm("DC0_H0_VM1")
    (datastore_dir(admin) / "DC0_H0_VM1" / "disk1-flat.vmdk").unlink()

    # When the disk is opened / Then the reason names the file and the 404
    missing = r"\[LocalDS_0\] DC0_H0_VM1/disk1-flat.vmdk.*404"
    with pytest.raises(DatastoreFileMissing, match=missing):
        async with provider.open_disk(vm, vm.disks[0].id):
            pass


async def test_with_cbt_on_only_allocated_areas_are_extents(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a VM with CBT on whose 1 MiB disk holds data at two places, holes elsewhere
    ref = find_vm(admin, "DC0_H0_VM0")
    run(ref.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    flat = datastore_dir(admin) / "DC0_H0_VM0" / "disk1-flat.vmdk"
    with flat.open("wb") as out:
        out.truncate(MIB)
        out.seek(64 * 1024)
        out.write(b"\x01" * 4096)
        out.seek(768 * 1024)
        out.write(b"\x02" * 8192)
    vm = await provider.vm("DC0_H0_VM0")

    # When the disk's extents are asked
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        extents = await reader.extents()
        first = await reader.read(extents[0].offset, extents[0].length)

    # Then CBT's full query names just the two areas, and they hold the data
    assert [(e.offset, e.length) for e in extents] == [(64 * 1024, 4096), (768 * 1024, 8192)]
    assert first == b"\x01" * 4096


async def test_cold_copy_through_the_platform_copy_engine(
    provider: VsphereProvider, admin: Any, tmp_path: Path
) -> None:
    # Given a powered-off VM whose disk holds data around a hole
    vm = await provider.vm("DC0_C0_RP0_VM1")
    await provider.shutdown(vm, timeout=5)
    content = _guest_bytes()
    (datastore_dir(admin) / "DC0_C0_RP0_VM1" / "disk1-flat.vmdk").write_bytes(content)

    # When the volume-service's path copies it: the reader's qemu source, described
    # for a workload, opened and copied by the engine with its checkpoint
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        ref = image_ref(reader.qemu_source())

        result = await copy_to_raw(ref, tmp_path)

    # Then the target holds the guest's bytes, verified by the engine's checksums
    assert (tmp_path / "disk.raw").read_bytes() == content
    assert result.size == MIB and result.source == result.target
