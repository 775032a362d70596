"""A vSphere session that ends in the middle of a copy (idle timeout, an administrator).

The simulator checks /folder requests against its live sessions, as vCenter does
(``go/simulator/folder_sessions.go``); the test ends Ferry's session with
``TerminateSession``, as an administrator would.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim
from vcsimkit import datastore_dir, find_vm, run

from ferry.bus import TemporaryError
from ferry.platform.copy import engine, sink, source
from ferry.providers.nbd import AsyncNbdClient
from ferry.providers.vsphere.disks import SessionExpired
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.volume_service.failures import classify
from ferry.volume_service.images import image_ref

MIB = 1024 * 1024


def _end_ferry_sessions(admin: Any, user: str) -> int:
    manager = admin.RetrieveContent().sessionManager
    mine = manager.currentSession.key
    ended = [s.key for s in manager.sessionList if s.userName == user and s.key != mine]
    if ended:
        manager.TerminateSession(ended)
    return len(ended)


def _copy(ref: Any, target: Path, state: Path) -> engine.Result:
    src = source.open_source(ref)
    try:
        return engine.copy(src, sink.open_sink(str(target), "raw", src.size), state)
    finally:
        src.close()


async def test_a_session_ended_mid_copy_fails_cleanly_and_a_retry_logs_in_anew(
    provider: VsphereProvider, admin: Any, tmp_path: Path
) -> None:
    # Given a powered-off VM whose 8 MiB disk holds known bytes
    vm = await provider.vm("DC0_C0_RP0_VM1")
    await provider.shutdown(vm, timeout=5)
    content = os.urandom(8 * MIB)
    (datastore_dir(admin) / "DC0_C0_RP0_VM1" / "disk1-flat.vmdk").write_bytes(content)
    # (the disk's capacity is still the model's 1 MiB: read and copy that much)
    size = vm.disks[0].capacity
    target = tmp_path / "disk.raw"

    # When the session ends while the disk is open, after a first read
    with pytest.raises(SessionExpired) as refused:
        async with provider.open_disk(vm, vm.disks[0].id) as reader:
            first = await reader.read(0, 4096)
            assert _end_ferry_sessions(admin, provider.session.credentials.username) >= 1
            # Then a ranged read is refused with the reason, never short or garbled data
            with pytest.raises(SessionExpired, match="session ended at offset 4096"):
                await reader.read(4096, 4096)
            # And the copy engine's read through nbdkit curl fails (an I/O error) ...
            ref = image_ref(reader.qemu_source())
            await asyncio.to_thread(_copy, ref, target, tmp_path / "state")
    # ... which leaving the reader names as the ended session, a retry's reason
    assert "session ended during the copy" in str(refused.value)
    retry = classify(refused.value, "disk copy")
    assert isinstance(retry, TemporaryError)
    assert first == content[:4096]

    # When the copy is tried again (a new delivery opens the disk again)
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        ref = image_ref(reader.qemu_source())
        result = await asyncio.to_thread(_copy, ref, target, tmp_path / "state")

    # Then the provider logged in anew and the target holds the source's bytes, verified
    assert target.read_bytes()[:size] == content[:size]
    assert result.source == result.target
    assert hashlib.sha256(target.read_bytes()[:size]).digest() == (
        hashlib.sha256(content[:size]).digest()
    )


async def test_a_session_ended_in_a_warm_round_is_retried_and_leaves_no_stray_snapshot(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a running VM with CBT on and a first round done (its snapshot the checkpoint)
    ref = find_vm(admin, "DC0_H0_VM0")
    run(ref.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
    flat = datastore_dir(admin) / "DC0_H0_VM0" / "disk1-flat.vmdk"
    flat.write_bytes(os.urandom(MIB))
    vm = await provider.vm("DC0_H0_VM0")
    [disk] = vm.disks
    async with provider.changes(vm, None) as full:
        pass

    # When the session ends while the next round reads through its NBD export
    with pytest.raises(SessionExpired, match="session ended during the round") as refused:
        async with provider.changes(vm, full.checkpoint) as delta:
            socket, _ = delta.nbd_export(disk.id)
            assert _end_ferry_sessions(admin, provider.session.credentials.username) >= 1
            client = await AsyncNbdClient.connect(socket)
            try:
                await client.read(0, MIB)
            finally:
                await client.close()
    # Then the round's failure is one the volume-service retries
    assert isinstance(classify(refused.value, "precopy"), TemporaryError)

    # When the round is run again from the previous checkpoint, after a guest write
    flat_bytes = bytearray(flat.read_bytes())
    flat_bytes[0:4096] = b"\x05" * 4096
    flat.write_bytes(bytes(flat_bytes))
    async with provider.changes(vm, full.checkpoint) as again:
        changed = await again.changed_extents(disk.id)
        data = await again.read(disk.id, 0, 4096)
    # Then it logged in anew and lists and reads the write
    assert changed and changed[0].offset == 0
    assert data == b"\x05" * 4096
    # And once its checkpoints are removed (the migration's clean-up), none is left
    for name in await provider.checkpoints(vm):
        await provider.remove_checkpoint(vm, name)
    assert await provider.checkpoints(vm) == []
