"""The warm oVirt test VM, shared by the tests that read its incremental backups.

A running libvirt guest with two qcow2 disks (``vda`` written with :data:`FILL`, ``vdb``
empty), behind the engine stand-in and the real imageio daemon: VM ``db``, both disks
backed up incrementally. The fixtures are module-scoped (one guest per test module);
a test module takes them by importing them::

    from ferry.testing.ovirt.warmguest import engine_fixture, guest_fixture, provider_fixture

and asks for ``guest``, ``engine`` and ``provider`` (the provider removes the VM's
checkpoints after each test). Writes go through the guest's block backend
(:meth:`ferry.testing.libvirtd.Guest.write`, :func:`zero`), so they reach its dirty
bitmaps as a guest's own writes would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import libvirt
import libvirt_qemu
import pytest

from ferry.providers.ovirt.provider import OvirtProvider
from ferry.testing import libvirtd
from ferry.testing.ovirt.engine import Disk, Engine, VmRecord
from ferry.testing.ovirt.imageio import Imageio

MiB = 1 << 20
BLOCK = 64 * 1024  # QEMU's dirty-bitmap granularity for these disks
SIZE = 32 * MiB
DATA = 8 * MiB  # a second disk, empty at first
FILL = [(0, MiB, 0x11), (8 * MiB, 2 * MiB, 0x22)]
VM = "db"


@pytest.fixture(scope="module", name="guest")
def guest_fixture() -> Iterator[libvirtd.Guest]:
    conn = libvirt.open(libvirtd.uri_or_skip())
    made = libvirtd.define_guest(conn, [SIZE, DATA], fill=FILL)
    yield made
    made.remove()
    conn.close()


@pytest.fixture(scope="module", name="engine")
def engine_fixture(
    tmp_path_factory: pytest.TempPathFactory, guest: libvirtd.Guest
) -> Iterator[Engine]:
    with Imageio(tmp_path_factory.mktemp("imageio")) as daemon, Engine(daemon) as eng:
        eng.delay = 0.05
        disk = Disk(name="root", image=guest.disks["vda"], format="cow", size=SIZE,
                    backup="incremental", target="vda")  # fmt: skip
        data = Disk(name="data", image=guest.disks["vdb"], format="cow", size=DATA,
                    backup="incremental", target="vdb", bootable=False)  # fmt: skip
        eng.add_vm(VmRecord(name=VM, disks=[disk, data], domain=guest.name))
        yield eng


@pytest.fixture(name="provider")
async def provider_fixture(engine: Engine) -> AsyncIterator[OvirtProvider]:
    made = OvirtProvider(engine.url, secret(engine), {"pollSeconds": 0.05})
    yield made
    vm = await made.vm(VM)
    for checkpoint in await made.checkpoints(vm):
        await made.remove_checkpoint(vm, checkpoint)
    await made.close()


def secret(engine: Engine) -> dict[str, str]:
    return {
        "username": engine.username,
        "password": engine.password,
        "cacert": engine.ca_file.read_text(),
    }


def expected(writes: list[tuple[int, int, int]], size: int = SIZE) -> bytearray:
    """A disk of ``size`` bytes after ``writes`` (offset, length, byte pattern)."""
    disk = bytearray(size)
    for offset, length, pattern in writes:
        disk[offset : offset + length] = bytes([pattern]) * length
    return disk


def zero(guest: libvirtd.Guest, offset: int, length: int) -> None:
    """A zeroing write through the guest's block backend (``write -z``) of ``vda``."""
    cmd = f'qemu-io -d virtio-disk0/virtio-backend "write -z {offset} {length}"'
    out = libvirt_qemu.qemuMonitorCommand(
        guest.dom, cmd, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    assert not out.strip(), out
