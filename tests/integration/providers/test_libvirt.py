"""The libvirt provider against a real libvirtd and QEMU (TCG) guests.

Guests run no operating system: the data-path guarantees are about what QEMU
writes and exports, and ``qemu-io`` through the monitor writes through the same
block backend (and dirty bitmaps) a guest's writes go through. Skipped on a
machine without libvirt, failed in CI, where it must run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import libvirt
import pytest

from ferry.proto.inventory import DiskFormat, Extent, PowerState, ProviderType
from ferry.providers import factory
from ferry.providers.base import (
    ChangedDisks,
    CheckpointGone,
    ProviderError,
    VmNotFound,
    WarmSource,
)
from ferry.providers.libvirt import jobs, offline
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.testing import libvirtd

MiB = 1024 * 1024
BLOCK = 64 * 1024  # QEMU's default dirty-bitmap granularity


@pytest.fixture(scope="session")
def libvirt_uri() -> str:
    return libvirtd.uri_or_skip()


@pytest.fixture
def conn(libvirt_uri: str) -> Iterator[libvirt.virConnect]:
    c = libvirt.open(libvirt_uri)
    yield c
    c.close()


@pytest.fixture
def guest(conn: libvirt.virConnect) -> Iterator[libvirtd.Guest]:
    made = libvirtd.define_guest(conn, [32 * MiB], fill=[(0, MiB, 0x11), (8 * MiB, 2 * MiB, 0x22)])
    yield made
    made.remove()


@pytest.fixture
async def provider(libvirt_uri: str) -> AsyncIterator[LibvirtProvider]:
    work = libvirtd.scratch_dir("ferry-work-")
    made = factory.create(_Spec(libvirt_uri, {"workdir": str(work)}), {})
    assert isinstance(made, LibvirtProvider)
    yield made
    await made.close()
    shutil.rmtree(work, ignore_errors=True)


class _Spec:
    def __init__(self, url: str, settings: dict[str, str]) -> None:
        self.type = ProviderType.LIBVIRT
        self.url = url
        self.settings = settings


async def _read_all(view: ChangedDisks, disk: str) -> bytes:
    return await view.read(disk, 0, view.size(disk))


async def test_inventory_reports_the_domain_as_libvirt_describes_it(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    # Given a running domain with one qcow2 disk, a CD-ROM and a NIC
    # When the provider lists its inventory
    vm = next(v for v in await provider.inventory() if v.name == guest.name)
    # Then the disk, NIC, CPU topology, memory and power are as defined
    assert vm.id == guest.dom.UUIDString()
    assert vm.provider_type == ProviderType.LIBVIRT
    assert vm.power_state == PowerState.ON
    assert (vm.cpu_sockets, vm.cpu_cores, vm.cpu_threads, vm.memory_mib) == (1, 2, 1, 64)
    [disk] = vm.disks
    assert (disk.id, disk.format, disk.bus, disk.capacity) == (
        "vda",
        DiskFormat.QCOW2,
        "virtio",
        32 * MiB,
    )
    assert disk.storage == str(guest.root)
    assert [n.mac for n in vm.nics] == [guest.mac]
    assert any("cdrom hdc" in w for w in vm.warnings)
    assert await provider.vm(guest.name) == vm


async def test_unknown_domain_and_unreachable_daemon_are_clear_errors(
    provider: LibvirtProvider, tmp_path: Path
) -> None:
    with pytest.raises(VmNotFound, match="no-such-domain"):
        await provider.vm("no-such-domain")
    gone = LibvirtProvider(
        f"qemu+unix:///system?socket={tmp_path}/none.sock", {"password": "hunter2"}
    )
    with pytest.raises(ProviderError, match="cannot connect") as caught:
        await gone.check()
    assert "hunter2" not in str(caught.value)


async def test_full_read_of_a_running_domain_equals_its_disk(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    # Given a running domain
    vm = await provider.vm(guest.name)
    # When its disk is read through the provider (a pull-mode backup export)
    async with provider.open_disk(vm, "vda") as disk:
        extents = await disk.extents()
        data = await disk.read(0, disk.size)
        uri = await disk.nbd_uri()
    # Then the bytes are the disk's and the extents name only the written ranges
    assert hashlib.sha256(data).hexdigest() == libvirtd.qcow2_sha256(guest.disks["vda"])
    assert extents == [Extent(0, MiB), Extent(8 * MiB, 2 * MiB)]
    assert "socket=" in uri
    # And the backup job is gone when the reader closes
    with pytest.raises(libvirt.libvirtError):
        guest.dom.backupGetXMLDesc(0)


async def test_incremental_returns_exactly_the_changed_blocks(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    # Given a running domain whose changes are tracked from a first full view
    vm = await provider.vm(guest.name)
    assert isinstance(provider, WarmSource)
    async with provider.changes(vm, None) as full:
        assert full.since is None
        assert await full.changed_extents("vda") == [Extent(0, MiB), Extent(8 * MiB, 2 * MiB)]
        first = full.checkpoint
    # When the guest writes two small ranges, one of them inside an old extent
    guest.write("vda", 4 * MiB, BLOCK, 0xAB)
    guest.write("vda", 8 * MiB + 3 * BLOCK, 4096, 0xCD)
    async with provider.changes(vm, first) as delta:
        changed = await delta.changed_extents("vda")
        new_bytes = await delta.read("vda", 4 * MiB, BLOCK)
        small = await delta.read("vda", 8 * MiB + 3 * BLOCK, 4096)
        second = delta.checkpoint
    # Then the delta lists exactly those blocks (at the 64 KiB tracking granularity)
    assert changed == [Extent(4 * MiB, BLOCK), Extent(8 * MiB + 3 * BLOCK, BLOCK)]
    assert new_bytes == b"\xab" * BLOCK and small == b"\xcd" * 4096
    # And a round with no writes changes nothing
    async with provider.changes(vm, second) as idle:
        assert await idle.changed_extents("vda") == []
        third = idle.checkpoint
    # And removing checkpoints leaves only the newest, with no backup job running
    for old in (first, second):
        await provider.remove_checkpoint(vm, old)
    await provider.remove_checkpoint(vm, first)  # already gone: no error
    assert await provider.checkpoints(vm) == [third]
    with pytest.raises(libvirt.libvirtError):
        guest.dom.backupGetXMLDesc(0)
    assert os.listdir(provider.workdir) == []


async def test_a_delta_against_a_removed_checkpoint_says_so(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    vm = await provider.vm(guest.name)
    async with provider.changes(vm, None) as full:
        first = full.checkpoint
    await provider.remove_checkpoint(vm, first)
    with pytest.raises(CheckpointGone):
        async with provider.changes(vm, first):
            pass
    assert os.listdir(provider.workdir) == []


async def test_a_backup_left_by_a_killed_service_is_ended_by_the_next_round(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    # Given a backup job whose owner died without ending it (never exited)
    vm = await provider.vm(guest.name)
    orphan = provider.changes(vm, None)
    await orphan.__aenter__()
    assert guest.dom.backupGetXMLDesc(0)
    # When a restarted service starts its next round
    async with provider.changes(vm, orphan.checkpoint) as delta:
        assert await delta.changed_extents("vda") == []
    # Then the orphan's job and export directory are gone
    with pytest.raises(libvirt.libvirtError):
        guest.dom.backupGetXMLDesc(0)
    assert not [p for p in os.listdir(provider.workdir) if p.startswith(jobs.WORKDIR_PREFIX)]
    assert not await provider.release_leftovers(vm)


async def test_shutdown_forces_a_guest_that_ignores_acpi_then_start(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    # Given a guest without an OS, which ignores the power button
    vm = await provider.vm(guest.name)
    # When it is shut down with a short grace period
    forced = await provider.shutdown(vm, timeout=1.0)
    # Then it was destroyed, and it starts again
    assert forced is True
    assert await provider.power_state(vm) == PowerState.OFF
    assert await provider.shutdown(vm, timeout=1.0) is False  # already off
    await provider.power_on(vm)
    assert await provider.power_state(vm) == PowerState.ON


async def test_cold_read_of_a_shut_off_domain_reads_its_file(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    guest.dom.destroy()
    vm = await provider.vm(guest.name)
    assert vm.power_state == PowerState.OFF
    async with provider.open_disk(vm, "vda") as disk:
        assert disk.qemu_source().format == "qcow2"
        assert await disk.extents() == [Extent(0, MiB), Extent(8 * MiB, 2 * MiB)]
        data = await disk.read(0, disk.size)
    assert hashlib.sha256(data).hexdigest() == libvirtd.qcow2_sha256(guest.disks["vda"])


async def test_v2v_input_keeps_the_password_out_of_argv(
    provider: LibvirtProvider, guest: libvirtd.Guest, tmp_path: Path
) -> None:
    secretive = LibvirtProvider(provider.client.uri, {"username": "ops", "password": "s3cr3t!"})
    vm = await provider.vm(guest.name)
    v2v = await secretive.v2v_input(vm, tmp_path)
    assert v2v.argv[:2] == ["-i", "libvirt"] and v2v.argv[-1] == guest.name
    assert all("s3cr3t" not in a for a in v2v.argv)
    [pw] = v2v.files
    assert Path(pw).read_text() == "s3cr3t!" and Path(pw).stat().st_mode & 0o777 == 0o600

    # under a bandwidth budget it is refused: virt-v2v's own reads could not be paced
    async def grant(nbytes: int) -> None:
        raise AssertionError("never asked")

    with pytest.raises(ProviderError, match="outside the bandwidth budgets"):
        await secretive.v2v_input(vm, tmp_path, pace=grant)


async def test_last_delta_after_power_off_reads_the_files_bitmaps_and_leaves_none(
    provider: LibvirtProvider, guest: libvirtd.Guest
) -> None:
    # Given a tracked running domain that writes, then is powered off (the cutover)
    vm = await provider.vm(guest.name)
    async with provider.changes(vm, None) as full:
        first = full.checkpoint
    guest.write("vda", 16 * MiB, 4096, 0xEE)
    await provider.shutdown(vm, timeout=0.5)
    # When the last delta is read from the shut-off domain
    async with provider.changes(vm, first) as last:
        changed = await last.changed_extents("vda")
        data = await last.read("vda", 16 * MiB, 4096)
        assert last.checkpoint == first  # nothing can change while off: no new checkpoint
    # Then it holds exactly the write made before the power-off
    assert changed == [Extent(16 * MiB, BLOCK)] and data == b"\xee" * 4096
    # And removing the checkpoint of the off domain leaves no bitmap in its file, also
    # when a killed run had removed its metadata but not yet the bitmap
    flag = libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY
    guest.dom.checkpointLookupByName(first, 0).delete(flag)
    assert offline.bitmaps(str(guest.disks["vda"])) == [first]
    await provider.remove_checkpoint(vm, first)
    assert await provider.checkpoints(vm) == []
    assert offline.bitmaps(str(guest.disks["vda"])) == []
    assert os.listdir(provider.workdir) == []
