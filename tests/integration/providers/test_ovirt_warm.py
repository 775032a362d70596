"""Warm migration from oVirt: the provider's incremental backups against the engine
stand-in, the real imageio daemon and a real running libvirt guest.

The engine is the stand-in (:mod:`ferry.testing.ovirt.engine`); what it does on the
host is real (:mod:`ferry.testing.ovirt.vdsm`): a libvirt pull-mode backup of the
running domain whose NBD exports (with the dirty bitmap for an incremental) the real
imageio daemon serves behind each transfer's ticket. The guest is a running QEMU with
no operating system: its writes come through QEMU's own ``qemu-io`` in the monitor, so
they go through the guest's block backend and its dirty bitmaps as a guest's would.
One guest, daemon and engine serve the module; each test removes its checkpoints.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import libvirt
import pytest

from ferry.proto.inventory import Extent, PowerState
from ferry.providers.base import CheckpointGone, WarmSource
from ferry.providers.ovirt import backups, transfers
from ferry.providers.ovirt.provider import OvirtProvider
from ferry.providers.ovirt.warm import BackupView
from ferry.testing import libvirtd
from ferry.testing.ovirt import vdsm, warmguest
from ferry.testing.ovirt.engine import Disk, Engine, VmRecord
from ferry.testing.ovirt.warmguest import (  # noqa: F401 - fixtures: guest, engine, provider
    BLOCK,
    DATA,
    FILL,
    SIZE,
    MiB,
    engine_fixture,
    guest_fixture,
    provider_fixture,
)

_expected = warmguest.expected
_zero = warmguest.zero


def _nothing_left(engine: Engine, guest: libvirtd.Guest, tickets: list[str]) -> None:
    """No backup in progress, no transfer open, no ticket on the daemon, no libvirt job,
    the disk unlocked."""
    rec = next(v for v in engine.vms.values() if v.name == "db")
    assert engine.backups.in_progress(rec) is None
    assert all(b.phase in ("succeeded", "failed") for b in engine.backups.backups.values())
    assert all(t.phase.startswith("finished") for t in engine.open_transfers())
    assert engine.imageio.tickets == set()
    assert tickets and all(engine.imageio.get_ticket(t) is None for t in tickets)
    with pytest.raises(libvirt.libvirtError):
        guest.dom.backupGetXMLDesc(0)
    assert not any(d.locked for d in rec.disks)


async def _left_by_a_killed_run(provider: OvirtProvider, disk_ids: list[str]) -> tuple[str, str]:
    """A full backup of ``disk_ids`` started as a round starts one, whose owner then died:
    (its id, its checkpoint)."""
    vm = await provider.vm("db")
    system = provider.client.system()
    return await asyncio.to_thread(backups.start, system, vm.name, vm.id, disk_ids, None)


def _tickets(engine: Engine) -> list[str]:
    return [t.ticket for t in engine.open_transfers() if not t.phase.startswith("finished")]


async def test_a_full_backup_read_through_its_export_equals_the_disk(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest, tmp_path: Path
) -> None:
    # Given the VM running on its libvirt domain, warm-capable
    vm = await provider.vm("db")
    assert isinstance(provider, WarmSource)
    assert await provider.preflight(vm, warm=True) == []
    copied = tmp_path / "copied.raw"
    # When a full view is taken and the data mover reads its NBD export whole
    async with provider.changes(vm, None) as view:
        assert view.since is None
        extents = await view.changed_extents(vm.disks[0].id)
        assert await view.changed_extents(vm.disks[1].id) == []
        assert view.size(vm.disks[1].id) == DATA
        socket, _export = view.nbd_export(vm.disks[0].id)
        proc = await asyncio.create_subprocess_exec(
            "qemu-img", "convert", "-f", "raw", "-O", "raw",
            f"json:{{\"driver\":\"raw\",\"file\":{{\"driver\":\"nbd\",\"server\":"
            f"{{\"type\":\"unix\",\"path\":\"{socket}\"}}}}}}", str(copied),
        )  # fmt: skip
        assert await proc.wait() == 0
        tickets = _tickets(engine)
        checkpoint = view.checkpoint
    # Then the extents are the data the disk holds, and the copy equals the disk
    assert extents == [Extent(0, MiB), Extent(8 * MiB, 2 * MiB)]
    assert copied.read_bytes() == _expected(FILL)
    # And the backup's checkpoint is the VM's one checkpoint, also in libvirt
    assert await provider.checkpoints(vm) == [checkpoint]
    assert guest.dom.checkpointLookupByName(checkpoint, 0) is not None
    _nothing_left(engine, guest, tickets)


async def test_an_incremental_lists_only_the_changed_extents_and_they_rebuild_the_disk(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest, tmp_path: Path
) -> None:
    # Given a full copy of the running VM's disk and its checkpoint
    vm = await provider.vm("db")
    disk = vm.disks[0].id
    copy = tmp_path / "copy.raw"
    copy.write_bytes(bytes(SIZE))
    async with provider.changes(vm, None) as full:
        first = full.checkpoint
        for e in await full.changed_extents(disk):
            data = await full.read(disk, e.offset, e.length)
            with copy.open("r+b") as out:
                out.seek(e.offset)
                out.write(data)
    # When the guest writes a new range, rewrites part of an old one and zeroes another
    guest.write("vda", 4 * MiB, BLOCK, 0xAB)
    guest.write("vda", 8 * MiB + 3 * BLOCK, 4096, 0xCD)
    _zero(guest, 0, BLOCK)
    guest.write("vdb", 2 * MiB, 8192, 0xEF)
    async with provider.changes(vm, first) as delta:
        assert delta.since == first
        changed = await delta.changed_extents(disk)
        assert await delta.changed_extents(vm.disks[1].id) == [Extent(2 * MiB, BLOCK)]
        assert await delta.read(vm.disks[1].id, 2 * MiB, 8192) == b"\xef" * 8192
        for e in changed:
            data = await delta.read(disk, e.offset, e.length)
            with copy.open("r+b") as out:
                out.seek(e.offset)
                out.write(data)
        tickets = _tickets(engine)
        second = delta.checkpoint
    # Then only the written blocks are listed (the zeroed one too), far fewer bytes than
    # the disk, and applying them to the full copy gives the disk's current bytes
    assert changed == [Extent(0, BLOCK), Extent(4 * MiB, BLOCK), Extent(8 * MiB + 3 * BLOCK, BLOCK)]
    assert sum(e.length for e in changed) * 50 < SIZE
    now = _expected(
        [*FILL, (4 * MiB, BLOCK, 0xAB), (8 * MiB + 3 * BLOCK, 4096, 0xCD), (0, BLOCK, 0)]
    )
    assert copy.read_bytes() == now
    # And the checkpoints form the chain, oldest first; a round without writes is empty
    assert await provider.checkpoints(vm) == [first, second]
    async with provider.changes(vm, second) as idle:
        assert await idle.changed_extents(disk) == []
    # And removing a checkpoint (the oldest, as the precopy loop does) keeps the chain
    await provider.remove_checkpoint(vm, first)
    await provider.remove_checkpoint(vm, first)  # already gone: no error
    assert (await provider.checkpoints(vm))[0] == second
    _nothing_left(engine, guest, tickets)


async def test_a_delta_from_a_checkpoint_the_engine_no_longer_has_is_checkpoint_gone(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    vm = await provider.vm("db")
    async with provider.changes(vm, None) as full:
        first = full.checkpoint
        tickets = _tickets(engine)
    await provider.remove_checkpoint(vm, first)
    for gone in (first, str(uuid.uuid4())):
        with pytest.raises(CheckpointGone):
            async with provider.changes(vm, gone):
                pass
    _nothing_left(engine, guest, tickets)


async def test_an_error_inside_the_view_leaves_no_backup_transfer_or_ticket(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    vm = await provider.vm("db")
    tickets: list[str] = []
    with pytest.raises(RuntimeError, match="copy failed"):
        async with provider.changes(vm, None) as view:
            await view.read(vm.disks[0].id, 0, 4096)
            tickets = _tickets(engine)
            raise RuntimeError("copy failed")
    # the transfers (one per disk) were cancelled, not finalized
    phases = [t.phase for t in engine.open_transfers() if t.ticket in tickets]
    assert phases == ["finished_failure"] * 2
    _nothing_left(engine, guest, tickets)


async def test_a_cancel_inside_the_view_leaves_no_backup_transfer_or_ticket(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    vm = await provider.vm("db")
    inside = asyncio.Event()
    tickets: list[str] = []

    async def round_() -> None:
        async with provider.changes(vm, None) as view:
            await view.read(vm.disks[0].id, 0, 4096)
            tickets.extend(_tickets(engine))
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(round_())
    await asyncio.wait_for(inside.wait(), 60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _nothing_left(engine, guest, tickets)


async def test_a_backup_left_by_a_killed_run_is_ended_before_the_next(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    # Given a backup (and a transfer of it) whose owner died without ending them
    vm = await provider.vm("db")
    system = provider.client.system()
    left, _checkpoint = await _left_by_a_killed_run(provider, [vm.disks[0].id])
    await asyncio.to_thread(transfers.start, system, vm.id, vm.disks[0].id, 120, left)
    rec = engine.vms[vm.id]
    assert engine.backups.in_progress(rec) is not None
    # When the next round starts
    async with provider.changes(vm, None) as view:
        tickets = _tickets(engine)
        assert isinstance(view, BackupView) and view.backup_id != left
    # Then the left backup was ended first, and this round left nothing either
    assert engine.backups.backups[left].phase == "succeeded"
    _nothing_left(engine, guest, tickets)


async def test_a_backup_left_by_a_killed_attempt_of_the_same_round_is_taken_over(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    # Given the full backup of both disks a killed round left, and its open transfer
    vm = await provider.vm("db")
    system = provider.client.system()
    disk_ids = [d.id for d in vm.disks]
    before = len(engine.backups.backups)
    left, checkpoint = await _left_by_a_killed_run(provider, disk_ids)
    killed = await asyncio.to_thread(transfers.start, system, vm.id, disk_ids[0], 120, left)
    # When the round runs again
    async with provider.changes(vm, None) as view:
        assert isinstance(view, BackupView)
        taken = (view.backup_id, view.checkpoint)
        data = await view.read(disk_ids[0], 0, 4 * MiB)
        tickets = _tickets(engine)
    # Then it read that backup's picture under that checkpoint: the same round
    assert taken == (left, checkpoint) and len(data) == 4 * MiB
    assert list(engine.backups.backups)[before:] == [left]  # no other backup was taken
    # and the killed attempt's transfer was cancelled; nothing is left
    assert engine.transfers[killed[0]].phase == "finished_failure"
    assert engine.backups.backups[left].phase == "succeeded"
    _nothing_left(engine, guest, tickets)


async def test_a_backup_left_while_the_vm_is_down_is_never_taken_over(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    # Given the backup a killed round left, and the VM down since (the cutover's power-off)
    vm = await provider.vm("db")
    system = provider.client.system()
    disk_ids = [d.id for d in vm.disks]
    left, _checkpoint = await _left_by_a_killed_run(provider, disk_ids)
    rec = engine.vms[vm.id]
    rec.status = "down"
    try:
        # When the last round looks for a backup to take over
        taken = await asyncio.to_thread(backups.take_over, system, vm.id, disk_ids, None)
    finally:
        rec.status = "up"
    # Then it takes none (that picture predates the power-off), and the left one ended
    assert taken is None
    assert engine.backups.backups[left].phase == "succeeded"
    assert engine.backups.in_progress(rec) is None


async def test_preflight_says_why_a_vm_cannot_go_warm(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest, tmp_path: Path
) -> None:
    # Given a VM on a raw disk, and the warm-capable VM with a checkpoint of someone else
    raw = tmp_path / "raw.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "16M"], check=True)
    engine.add_vm(VmRecord(name="flat", disks=[Disk(name="flat-root", image=raw, format="raw",
                                                     size=16 * MiB)], status="down"))  # fmt: skip
    flat = await provider.vm("flat")
    vm = await provider.vm("db")
    async with provider.changes(vm, None):
        pass
    # When preflight looks at them for a warm plan
    flat_reasons = await provider.preflight(flat, warm=True)
    db_reasons = await provider.preflight(vm, warm=True)
    # Then each says why, and a cold plan of either is fine
    assert len(flat_reasons) == 1 and "incremental" in flat_reasons[0]
    assert len(db_reasons) == 1 and "1 incremental-backup checkpoint" in db_reasons[0]
    assert await provider.preflight(flat, warm=False) == []


async def test_the_last_delta_after_the_power_off_reads_the_files_and_leaves_nothing(
    provider: OvirtProvider, engine: Engine, guest: libvirtd.Guest
) -> None:
    # Given a tracked running VM that writes, then is powered off through the engine
    # (the cutover; with no operating system the guest ignores the power button)
    vm = await provider.vm("db")
    async with provider.changes(vm, None) as full:
        first = full.checkpoint
    guest.write("vda", 16 * MiB, 4096, 0xEE)
    assert await provider.shutdown(vm, timeout=1.0) is True
    assert await provider.power_state(vm) == PowerState.OFF and not guest.dom.isActive()
    # When the last delta is read from the VM that is down (the engine's cold backup)
    async with provider.changes(vm, first) as last:
        changed = await last.changed_extents(vm.disks[0].id)
        data = await last.read(vm.disks[0].id, 16 * MiB, 4096)
        tickets = _tickets(engine)
    # Then it holds exactly the write made before the power-off
    assert changed == [Extent(16 * MiB, BLOCK)] and data == b"\xee" * 4096
    # And removing every checkpoint leaves none in the engine, libvirt or the file
    for checkpoint in await provider.checkpoints(vm):
        await provider.remove_checkpoint(vm, checkpoint)
    assert await provider.checkpoints(vm) == []
    assert guest.dom.listAllCheckpoints(0) == []
    assert vdsm.bitmaps(guest.disks["vda"]) == vdsm.bitmaps(guest.disks["vdb"]) == []
    _nothing_left(engine, guest, tickets)
    # And the VM starts again through the engine
    await provider.power_on(vm)
    assert guest.dom.isActive()
