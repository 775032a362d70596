"""Warm rounds from vSphere: snapshots as checkpoints, changed areas from CBT change ids."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim
from vcsimkit import datastore_dir, find_vm, run

from ferry.providers.base import CheckpointGone, WarmSource
from ferry.providers.nbd import AsyncNbdClient
from ferry.providers.vsphere.disks import DatastoreFileMissing
from ferry.providers.vsphere.provider import VsphereProvider

MIB = 1024 * 1024
BLOCK = 64 * 1024


def _arrange(admin: Any, name: str) -> Path:
    """CBT on, and a 1 MiB flat disk with data in its first and last 128 KiB."""
    run(find_vm(admin, name).ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    flat = datastore_dir(admin) / name / "disk1-flat.vmdk"
    with flat.open("wb") as out:
        out.truncate(MIB)
        out.write(os.urandom(128 * 1024))
        out.seek(MIB - 128 * 1024)
        out.write(os.urandom(128 * 1024))
    return flat


def _write(flat: Path, offset: int, data: bytes) -> None:
    """A guest write, as the flat extent sees it."""
    with flat.open("r+b") as out:
        out.seek(offset)
        out.write(data)


async def test_rounds_list_only_what_changed_since_the_previous_snapshot(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a running VM with CBT on and data at both ends of its disk
    flat = _arrange(admin, "DC0_H0_VM0")
    vm = await provider.vm("DC0_H0_VM0")
    [disk] = vm.disks
    assert isinstance(provider, WarmSource)

    # When the full view is taken
    async with provider.changes(vm, None) as full:
        first = await full.changed_extents(disk.id)
        socket, export = full.nbd_export(disk.id)
        assert export == ""
        client = await AsyncNbdClient.connect(socket)
        try:
            served = await client.read(0, MIB)
        finally:
            await client.close()
    # Then it lists the allocated areas and serves the disk's bytes
    assert [(e.offset, e.length) for e in first] == [
        (0, 128 * 1024),
        (MIB - 128 * 1024, 128 * 1024),
    ]
    assert served == flat.read_bytes()

    # When the guest writes 4 KiB in one block and 8 KiB across two, then a delta is taken
    _write(flat, 300 * 1024, b"\x07" * 4096)
    _write(flat, 8 * BLOCK - 4096, b"\x09" * 8192)
    async with provider.changes(vm, full.checkpoint) as delta:
        second = await delta.changed_extents(disk.id)
        data = await delta.read(disk.id, 4 * BLOCK, BLOCK)
    # Then only the 64 KiB blocks holding those writes are listed, and they read back
    assert [(e.offset, e.length) for e in second] == [(4 * BLOCK, BLOCK), (7 * BLOCK, 2 * BLOCK)]
    assert data == flat.read_bytes()[4 * BLOCK : 5 * BLOCK]

    # And a round with no writes lists nothing
    async with provider.changes(vm, delta.checkpoint) as quiet:
        assert await quiet.changed_extents(disk.id) == []

    # And each round's snapshot is a checkpoint, oldest first, until removed
    assert await provider.checkpoints(vm) == [full.checkpoint, delta.checkpoint, quiet.checkpoint]
    for checkpoint in await provider.checkpoints(vm):
        await provider.remove_checkpoint(vm, checkpoint)
    await provider.remove_checkpoint(vm, full.checkpoint)  # gone already: no error
    assert await provider.checkpoints(vm) == []
    assert (await provider.vm("DC0_H0_VM0")).snapshots == []


async def test_a_delta_from_a_removed_checkpoint_asks_for_a_full_copy(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a checkpoint that was removed at the source
    _arrange(admin, "DC0_H0_VM1")
    vm = await provider.vm("DC0_H0_VM1")
    async with provider.changes(vm, None) as full:
        pass
    await provider.remove_checkpoint(vm, full.checkpoint)

    # When a delta is asked from it / Then the caller learns it must copy in full again
    with pytest.raises(CheckpointGone):
        async with provider.changes(vm, full.checkpoint):
            pass
    # And no snapshot was left by the refused round
    assert await provider.checkpoints(vm) == []


async def test_user_snapshots_are_not_checkpoints(provider: VsphereProvider, admin: Any) -> None:
    # Given a VM with a user's snapshot and one of Ferry's
    _arrange(admin, "DC0_C0_RP0_VM0")
    run(find_vm(admin, "DC0_C0_RP0_VM0").CreateSnapshot_Task("before-upgrade", "", False, False))
    vm = await provider.vm("DC0_C0_RP0_VM0")
    async with provider.changes(vm, None) as view:
        pass

    # When the checkpoints are listed and removed
    assert await provider.checkpoints(vm) == [view.checkpoint]
    await provider.remove_checkpoint(vm, view.checkpoint)

    # Then the user's snapshot is still there
    assert (await provider.vm("DC0_C0_RP0_VM0")).snapshots == ["before-upgrade"]


async def test_a_view_that_cannot_read_a_disk_leaves_no_snapshot(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a VM with CBT on whose disk file is gone from the datastore
    flat = _arrange(admin, "DC0_C0_RP0_VM1")
    vm = await provider.vm("DC0_C0_RP0_VM1")
    flat.unlink()

    # When a round's view is entered / Then the 404 is the reason
    with pytest.raises(DatastoreFileMissing, match="404"):
        async with provider.changes(vm, None):
            pass
    # And the snapshot taken for it was removed
    assert await provider.checkpoints(vm) == []
