"""The oVirt provider against the engine stand-in and the real imageio daemon.

The SDK (``ovirtsdk4``) is real, the daemon is real (``ovirt-imageio``), the disks are
real qcow2/raw images served through qemu-nbd; only the engine is a stand-in
(:mod:`ferry.testing.ovirt.engine`).
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.proto.inventory import DiskFormat, Firmware, PowerState
from ferry.providers.base import ProviderError
from ferry.providers.ovirt.provider import OvirtProvider
from ferry.testing.ovirt.engine import Disk, Engine, Nic, VmRecord
from ferry.testing.ovirt.imageio import Imageio

MiB = 1 << 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imageio]:
    with Imageio(tmp_path_factory.mktemp("imageio")) as d:
        yield d


@pytest.fixture
def engine(daemon: Imageio) -> Iterator[Engine]:
    with Engine(daemon) as eng:
        eng.delay = 0.05
        yield eng


def _qcow2(path: Path) -> Path:
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(path), "64M"], check=True)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 3M 2M", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def _vm(engine: Engine, tmp_path: Path, **kw: object) -> VmRecord:
    disk = Disk(name="root", image=_qcow2(tmp_path / "root.qcow2"), format="cow", size=64 * MiB)
    return engine.add_vm(
        VmRecord(
            name="web",
            disks=[disk],
            nics=[Nic(name="nic1", mac="56:6f:00:00:00:01")],
            bios="q35_ovmf",
            **kw,  # type: ignore[arg-type]
        )
    )


def _provider(engine: Engine) -> OvirtProvider:
    secret = {
        "username": engine.username,
        "password": engine.password,
        "cacert": engine.ca_file.read_text(),
    }
    return OvirtProvider(engine.url, secret, {"pollSeconds": 0.05})


def test_inventory_describes_vm_disks_nics_and_firmware(engine: Engine, tmp_path: Path) -> None:
    rec = _vm(engine, tmp_path)
    provider = _provider(engine)

    vm = asyncio.run(provider.vm("web"))

    assert vm.id == rec.id and vm.power_state == PowerState.ON
    assert vm.firmware == Firmware.UEFI
    (disk,) = vm.disks
    assert (disk.format, disk.capacity, disk.bus, disk.storage) == (
        DiskFormat.QCOW2,
        64 * MiB,
        "virtio",
        "data",
    )
    assert disk.allocated is not None and 0 < disk.allocated < 64 * MiB
    assert [(n.mac, n.network, n.model) for n in vm.nics] == [
        ("56:6f:00:00:00:01", "ovirtmgmt", "virtio")
    ]


def test_refused_credentials_are_a_clear_reason(engine: Engine) -> None:
    cacert = engine.ca_file.read_text()
    provider = OvirtProvider(
        engine.url, {"username": engine.username, "password": "wrong", "cacert": cacert}
    )
    with pytest.raises(ProviderError, match="refused the credentials"):
        asyncio.run(provider.check())


def test_an_engine_certificate_not_signed_by_the_ca_is_refused(engine: Engine) -> None:
    provider = OvirtProvider(engine.url, {"username": engine.username, "password": "x"})
    with pytest.raises(ProviderError, match="SSL certificate"):
        asyncio.run(provider.check())


def test_shutdown_then_stop_when_the_guest_ignores_it_and_start(
    engine: Engine, tmp_path: Path
) -> None:
    _vm(engine, tmp_path, ignores_shutdown=True)
    provider = _provider(engine)

    async def run() -> tuple[bool, PowerState, PowerState]:
        vm = await provider.vm("web")
        forced = await provider.shutdown(vm, 0.3)
        off = await provider.power_state(vm)
        await provider.power_on(vm)
        return forced, off, await provider.power_state(vm)

    forced, off, on = asyncio.run(run())
    assert forced and off == PowerState.OFF and on == PowerState.ON
    assert [a for _n, a in engine.actions] == ["shutdown", "stop", "start"]


@pytest.mark.slow  # qemu-img reads 64 MiB through nbdkit and imageio: several seconds
def test_disk_read_through_a_transfer_equals_the_image_and_leaves_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    rec = _vm(engine, tmp_path, status="down")
    provider = _provider(engine)
    raw = tmp_path / "expected.raw"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(rec.disks[0].image), str(raw)], check=True
    )

    async def run() -> tuple[bytes, list[tuple[int, int]], bytes]:
        vm = await provider.vm("web")
        async with provider.open_disk(vm, vm.disks[0].id) as disk:
            assert len(engine.open_transfers()) == 1
            assert engine.imageio.exports  # a ticket on the real daemon
            extents = [(e.offset, e.length) for e in await disk.extents()]
            copied = tmp_path / "copied.raw"
            proc = await asyncio.create_subprocess_exec(
                "qemu-img", "convert", "-O", "raw", *disk.qemu_source().qemu_img_args(),
                str(copied),
            )  # fmt: skip
            assert await proc.wait() == 0
            return await disk.read(3 * MiB, 16), extents, copied.read_bytes()

    head, extents, copied = asyncio.run(run())
    assert head == b"\x5a" * 16
    assert extents == [(3 * MiB, 2 * MiB)]  # imageio's zero extents reach the reader
    assert hashlib.sha256(copied).digest() == hashlib.sha256(raw.read_bytes()).digest()
    assert engine.imageio.exports == {}  # ticket removed, qemu-nbd gone
    assert all(t.phase == "finished_success" for t in engine.open_transfers())
    assert not rec.disks[0].locked


def test_a_failed_read_cancels_its_transfer(engine: Engine, tmp_path: Path) -> None:
    _vm(engine, tmp_path, status="down")
    provider = _provider(engine)

    async def run() -> None:
        vm = await provider.vm("web")
        async with provider.open_disk(vm, vm.disks[0].id):
            raise RuntimeError("copy failed")

    with pytest.raises(RuntimeError, match="copy failed"):
        asyncio.run(run())
    assert engine.imageio.exports == {}
    assert [t.phase for t in engine.open_transfers()] == ["finished_failure"]


def test_a_transfer_left_by_a_killed_run_is_cancelled_before_the_next(
    engine: Engine, tmp_path: Path
) -> None:
    rec = _vm(engine, tmp_path, status="down")
    provider = _provider(engine)
    vm = asyncio.run(provider.vm("web"))
    from ferry.providers.ovirt import transfers

    # a run that died after adding its transfer: the transfer still holds the disk
    left, _url = transfers.start(provider.client.system(), vm.id, vm.disks[0].id)
    assert rec.disks[0].locked

    async def run() -> None:
        async with provider.open_disk(vm, vm.disks[0].id) as disk:
            assert disk.transfer_id != left

    asyncio.run(run())
    assert engine.imageio.exports == {}
    assert not rec.disks[0].locked


def test_two_disks_of_one_vm_are_read_at_once_without_ending_each_others_transfer(
    engine: Engine, tmp_path: Path
) -> None:
    # Given a VM with two disks (a volume-service copying disks in parallel)
    first = Disk(name="root", image=_qcow2(tmp_path / "a.qcow2"), format="cow", size=64 * MiB)
    second = Disk(name="data", image=_qcow2(tmp_path / "b.qcow2"), format="cow", size=64 * MiB)
    engine.add_vm(VmRecord(name="two", disks=[first, second], nics=[], status="down"))
    provider = _provider(engine)

    async def run() -> tuple[bytes, bytes]:
        vm = await provider.vm("two")
        # When the second disk's read opens while the first's is open
        async with (
            provider.open_disk(vm, vm.disks[0].id) as one,
            provider.open_disk(vm, vm.disks[1].id) as two,
        ):
            # Then both transfers still read (the second did not cancel the first's as a
            # leftover of a killed run)
            return await one.read(3 * MiB, 16), await two.read(3 * MiB, 16)

    assert asyncio.run(run()) == (b"\x5a" * 16, b"\x5a" * 16)
    assert engine.imageio.exports == {}
    assert all(t.phase == "finished_success" for t in engine.open_transfers())


def test_the_engine_refuses_a_transfer_of_a_running_vm(engine: Engine, tmp_path: Path) -> None:
    _vm(engine, tmp_path)
    provider = _provider(engine)

    async def run() -> None:
        vm = await provider.vm("web")
        async with provider.open_disk(vm, vm.disks[0].id):
            pass

    with pytest.raises(ProviderError, match="is running"):
        asyncio.run(run())
    assert engine.imageio.exports == {}


def test_imageio_refusing_the_ticket_fails_the_read_without_naming_it(
    engine: Engine, tmp_path: Path
) -> None:
    _vm(engine, tmp_path, status="down")
    provider = _provider(engine)
    vm = asyncio.run(provider.vm("web"))
    seen: list[str] = []

    async def read_after_refusal() -> None:
        async with provider.open_disk(vm, vm.disks[0].id) as disk:
            (ticket,) = engine.imageio.exports
            seen.append(ticket)
            engine.imageio.del_ticket(ticket)  # the daemon no longer honours it
            await disk.read(3 * MiB, 4096)

    with pytest.raises(ProviderError) as failed:
        asyncio.run(read_after_refusal())
    # the ticket is a secret: the reason must not carry it
    assert seen and seen[0] not in str(failed.value)
    assert engine.imageio.exports == {}  # the transfer was cancelled all the same
    assert list(engine.ended.values()) == ["finished_failure"]


def test_preflight_refuses_warm_of_a_disk_without_incremental_backup(
    engine: Engine, tmp_path: Path
) -> None:
    _vm(engine, tmp_path)  # a qcow2 disk whose backup mode is none
    provider = _provider(engine)

    async def run() -> tuple[list[str], list[str]]:
        vm = await provider.vm("web")
        return await provider.preflight(vm, warm=True), await provider.preflight(vm, warm=False)

    warm, cold = asyncio.run(run())
    assert cold == []
    assert len(warm) == 1 and "backup mode is incremental" in warm[0] and "cold" in warm[0]
