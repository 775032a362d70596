"""A vSphere round killed mid-way (kill -9) and run again gets the same picture back.

The killed attempt is a real child process (``killed_round.py``, its own login)
killed with SIGKILL inside its view, so nothing of it survives but what it left
in vSphere: its snapshot. The round run again by a fresh provider must find that
snapshot by the round's name and reuse it (same checkpoint, same change ids, same
changed areas, no second snapshot), which is what lets the volume's copy resume
inside the round; another round must not reuse it, and clean-up removes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim
from vcsimkit import datastore_dir, find_vm, run

from ferry.proto.inventory import Extent, Vm
from ferry.providers.vsphere import snapshots
from ferry.providers.vsphere.disks import DatastoreFileMissing
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.server import Endpoint

MIB = 1024 * 1024
BLOCK = 64 * 1024
CHILD = Path(__file__).with_name("killed_round.py")


def _arrange(admin: Any, name: str) -> Path:
    """CBT on, and a 1 MiB flat disk with data in its first 128 KiB."""
    run(find_vm(admin, name).ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    flat = datastore_dir(admin) / name / "disk1-flat.vmdk"
    with flat.open("wb") as out:
        out.truncate(MIB)
        out.write(os.urandom(128 * 1024))
    return flat


def _write(flat: Path, offset: int, data: bytes) -> None:
    """A guest write, as the flat extent sees it."""
    with flat.open("r+b") as out:
        out.seek(offset)
        out.write(data)


def _ferry_snapshots(admin: Any, name: str) -> list[tuple[str, str]]:
    """Ferry's snapshots on the VM as an administrator sees them: (name, moref), sorted."""
    tree = snapshots.tree(find_vm(admin, name))
    nodes = [n for n in snapshots.walk(tree) if n.name.startswith("ferry-")]
    return sorted((n.name, n.snapshot._moId) for n in nodes)


def _names(found: list[tuple[str, str]]) -> list[str]:
    return [name for name, _ in found]


def _killed_attempt(vcsim: Endpoint, vm: Vm, since: str, round_id: str) -> dict[str, Any]:
    """Open the round's view in a child process, then kill -9 it inside the view."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        args = {
            "url": vcsim.url,
            "ca": vcsim.cert_file,
            "user": vcsim.username,
            "password": vcsim.password,
            "vm": vm.id,
            "since": since,
            "round": round_id,
        }
        child.stdin.write(json.dumps(args) + "\n")
        child.stdin.flush()
        line = child.stdout.readline()  # the view is open: the child waits in it
        assert line, "the killed attempt exited before opening its view"
        seen: dict[str, Any] = json.loads(line)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return seen


def _pairs(extents: list[Extent]) -> list[list[int]]:
    return [[e.offset, e.length] for e in extents]


async def test_a_killed_round_run_again_reuses_its_snapshot_and_picture(
    provider: VsphereProvider, admin: Any, vcsim: Endpoint
) -> None:
    # Given a VM whose first round is done, and a guest write of one block after it
    flat = _arrange(admin, "DC0_H0_VM0")
    vm = await provider.vm("DC0_H0_VM0")
    [disk] = vm.disks
    async with provider.changes(vm, None, "m1/vm/0") as full:
        pass
    _write(flat, 4 * BLOCK, b"\x07" * 4096)

    # When round 1 is killed (kill -9) inside its view, the guest writes again, and
    # the round is run again by a provider with a login of its own
    killed = _killed_attempt(vcsim, vm, full.checkpoint, "m1/vm/1")
    taken = _ferry_snapshots(admin, "DC0_H0_VM0")
    assert _names(taken) == sorted([full.checkpoint, killed["checkpoint"]])
    _write(flat, 9 * BLOCK, b"\x09" * 4096)
    async with provider.changes(vm, full.checkpoint, "m1/vm/1") as again:
        areas = await again.changed_extents(disk.id)
        # Then it is the killed attempt's view: same checkpoint, same changed areas
        # (the later write is not in them), the same snapshot, no second one
        assert again.reused
        assert again.checkpoint == killed["checkpoint"]
        assert _pairs(areas) == killed["areas"][disk.id] == [[4 * BLOCK, BLOCK]]
        assert _ferry_snapshots(admin, "DC0_H0_VM0") == taken

    # And the next round counts the later write from it: nothing is lost
    async with provider.changes(vm, again.checkpoint, "m1/vm/2") as after:
        assert not after.reused
        assert _pairs(await after.changed_extents(disk.id)) == [[9 * BLOCK, BLOCK]]

    # And clean-up (cancel, failure: every checkpoint the source lists) removes them all
    for checkpoint in await provider.checkpoints(vm):
        await provider.remove_checkpoint(vm, checkpoint)
    assert _ferry_snapshots(admin, "DC0_H0_VM0") == []


async def test_another_round_or_a_snapshot_gone_is_not_reused(
    provider: VsphereProvider, admin: Any, vcsim: Endpoint
) -> None:
    # Given a first round done and round 1 killed inside its view
    flat = _arrange(admin, "DC0_H0_VM1")
    vm = await provider.vm("DC0_H0_VM1")
    async with provider.changes(vm, None, "m1/vm/0") as full:
        pass
    _write(flat, 2 * BLOCK, b"\x05" * 4096)
    killed = _killed_attempt(vcsim, vm, full.checkpoint, "m1/vm/1")

    # When the final round (the last precopy's number, a picture after the power-off)
    # or another migration's round asks from the same checkpoint
    for other in ("m1/vm/final", "m2/vm/1"):
        async with provider.changes(vm, full.checkpoint, other) as view:
            pass
        # Then each takes a snapshot of its own
        assert not view.reused and view.checkpoint != killed["checkpoint"]
    # And so does round 1 asked from another checkpoint
    async with provider.changes(vm, None, "m1/vm/1") as view:
        assert not view.reused and view.checkpoint != killed["checkpoint"]
    assert len(await provider.checkpoints(vm)) == 5

    # When the killed attempt's snapshot is gone (removed at the source) and round 1 runs
    await provider.remove_checkpoint(vm, killed["checkpoint"])
    async with provider.changes(vm, full.checkpoint, "m1/vm/1") as view:
        pass
    # Then a new snapshot is taken under the round's name
    assert not view.reused and view.checkpoint == killed["checkpoint"]
    assert _names(_ferry_snapshots(admin, "DC0_H0_VM1")).count(killed["checkpoint"]) == 1

    # And the restart clean-up removes every Ferry snapshot it finds
    await provider.remove_snapshots(vm)
    assert await provider.checkpoints(vm) == []


async def test_a_reused_snapshot_stays_when_the_round_cannot_read_its_disk(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given round 0's snapshot left by an attempt that did not finish the round
    flat = _arrange(admin, "DC0_C0_RP0_VM0")
    vm = await provider.vm("DC0_C0_RP0_VM0")
    async with provider.changes(vm, None, "m1/vm/0") as first:
        pass

    # When the round runs again but its disk file is gone from the datastore
    flat.unlink()
    with pytest.raises(DatastoreFileMissing, match="404"):
        async with provider.changes(vm, None, "m1/vm/0"):
            pass

    # Then the snapshot stays, once, for the next attempt (or the clean-up) to find
    assert _names(_ferry_snapshots(admin, "DC0_C0_RP0_VM0")) == [first.checkpoint]
