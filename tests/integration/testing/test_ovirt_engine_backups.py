"""The engine stand-in's backups refuse what the engine refuses (the rules of oVirt's
``StartVmBackupCommand``, ``StopVmBackupCommand`` and ``DeleteVmCheckpointCommand``),
asked through the real SDK, with a real libvirt backup of a running domain behind them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import libvirt
import ovirtsdk4 as sdk
import pytest
from ovirtsdk4 import types

from ferry.testing import libvirtd
from ferry.testing.ovirt.engine import Disk, Engine, VmRecord
from ferry.testing.ovirt.imageio import Imageio

MiB = 1 << 20


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, VmRecord]]:
    conn = libvirt.open(libvirtd.uri_or_skip())
    guest = libvirtd.define_guest(conn, [16 * MiB])
    try:
        with Imageio(tmp_path_factory.mktemp("imageio")) as daemon, Engine(daemon) as eng:
            disk = Disk(name="root", image=guest.disks["vda"], format="cow", size=16 * MiB,
                        backup="incremental", target="vda")  # fmt: skip
            yield eng, eng.add_vm(VmRecord(name="db", disks=[disk], domain=guest.name))
    finally:
        guest.remove()
        conn.close()


@pytest.fixture
def vm_service(engine: tuple[Engine, VmRecord]) -> Iterator[Any]:
    eng, vm = engine
    conn = sdk.Connection(url=eng.url, username=eng.username, password=eng.password,
                          ca_file=str(eng.ca_file))  # fmt: skip
    yield conn.system_service().vms_service().vm_service(vm.id)
    conn.close()


def _ready(service: Any, backup_id: str) -> Any:
    one = service.backups_service().backup_service(backup_id)
    deadline = time.monotonic() + 60
    while (got := one.get()).phase != types.BackupPhase.READY:
        assert got.phase != types.BackupPhase.FAILED and time.monotonic() < deadline
        time.sleep(0.05)
    return got


def test_a_backup_in_progress_refuses_a_second_one_and_the_removal_of_a_checkpoint(
    engine: tuple[Engine, VmRecord], vm_service: Any
) -> None:
    eng, vm = engine
    backups = vm_service.backups_service()
    disks = [types.Disk(id=vm.disks[0].id)]
    # Given a ready full backup of the running VM (its checkpoint the VM's only one)
    first = _ready(vm_service, backups.add(types.Backup(disks=disks)).id)
    assert first.from_checkpoint_id is None and first.to_checkpoint_id
    assert vm.disks[0].locked
    [checkpoint] = vm_service.checkpoints_service().list()
    assert checkpoint.id == first.to_checkpoint_id and checkpoint.parent_id is None
    # When a second backup and the checkpoint's removal are asked meanwhile, both are refused
    with pytest.raises(sdk.Error, match="already in progress"):
        backups.add(types.Backup(disks=disks))
    cp = vm_service.checkpoints_service().checkpoint_service(checkpoint.id)
    with pytest.raises(sdk.Error, match="during a backup"):
        cp.remove()
    # And once finalized the backup ends, the disk is unlocked, a second finalize is refused
    one = backups.backup_service(first.id)
    one.finalize()
    deadline = time.monotonic() + 60
    while one.get().phase != types.BackupPhase.SUCCEEDED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not vm.disks[0].locked
    with pytest.raises(sdk.Error, match="not ready"):
        one.finalize()
    # And an incremental from the checkpoint is the next checkpoint's parent; the
    # checkpoint can be removed then, its child re-parented
    second = _ready(
        vm_service, backups.add(types.Backup(disks=disks, from_checkpoint_id=checkpoint.id)).id
    )
    backups.backup_service(second.id).finalize()
    while backups.backup_service(second.id).get().phase != types.BackupPhase.SUCCEEDED:
        time.sleep(0.05)
    [_, child] = vm_service.checkpoints_service().list()
    assert child.id == second.to_checkpoint_id and child.parent_id == checkpoint.id
    cp.remove()
    [left] = vm_service.checkpoints_service().list()
    assert left.id == child.id and left.parent_id is None
    vm_service.checkpoints_service().checkpoint_service(left.id).remove()
    assert eng.imageio.tickets == set()


def test_an_incremental_from_an_unknown_checkpoint_is_refused(
    engine: tuple[Engine, VmRecord], vm_service: Any
) -> None:
    _eng, vm = engine
    with pytest.raises(sdk.Error, match="does not exist"):
        vm_service.backups_service().add(
            types.Backup(
                disks=[types.Disk(id=vm.disks[0].id)], from_checkpoint_id=str(uuid.uuid4())
            )
        )
    assert not vm.disks[0].locked
