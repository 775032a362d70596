"""Incremental backups and checkpoints through the engine (oVirt 4.4+), blocking calls.

A backup is added on the VM for its disks, from a checkpoint for an incremental one,
and waited on until ``ready``; its ``to_checkpoint_id`` is the new checkpoint. It is
always finalized, and waited on until the engine says ``succeeded`` or ``failed``, so
its exports are gone and the disks unlocked when :func:`finalize` returns. Each one
Ferry adds carries ``ferry:VM-ID`` as its description, so one a killed Ferry left is
found before the next: the engine refuses a second backup of a VM, and the removal of
a checkpoint during one. A precopy run again takes over the one its killed attempt
left when it is that very round's (:func:`take_over`: the VM still up, the backup
ready, from the same checkpoint, of the same disks): the same point-in-time picture
under the same new checkpoint, so the copy resumes inside the round instead of
starting it afresh from a new backup. Never while the VM is down: the last round reads
the disks after the power-off, and a backup taken before it misses the guest's last
writes. Any other is finalized (:func:`end_leftovers`).

oVirt's checkpoints form one chain per VM (a new one's parent is the newest) and name
no owner; Ferry's preflight refuses a warm VM that already has some, so every
checkpoint of the VM is one Ferry took (:func:`checkpoints`, oldest first).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ovirtsdk4 as sdk
from ovirtsdk4 import types

from ferry.providers.base import CheckpointGone, ProviderError
from ferry.providers.ovirt import transfers

POLL = 0.2
WAIT_SECONDS = 300.0
_ENDED = {types.BackupPhase.SUCCEEDED, types.BackupPhase.FAILED}


def _vm(system: Any, vm_id: str) -> Any:
    return system.vms_service().vm_service(vm_id)


def checkpoints(system: Any, vm_id: str) -> list[str]:
    """The VM's checkpoints, oldest first (following the parents)."""
    found = _vm(system, vm_id).checkpoints_service().list()
    parents = {str(c.id): str(c.parent_id or "") for c in found}
    children = {p: c for c, p in parents.items()}
    roots = [c for c, p in parents.items() if p not in parents]
    ordered: list[str] = []
    node = roots[0] if len(roots) == 1 else None
    while node is not None and node not in ordered:
        ordered.append(node)
        node = children.get(node)
    if len(ordered) != len(parents):  # not one chain: the engine's listing order
        return [str(c.id) for c in found]
    return ordered


def start(system: Any, vm_name: str, vm_id: str, disk_ids: list[str],
          since: str | None) -> tuple[str, str]:  # fmt: skip
    """Add a backup and wait until it is ready; (backup id, its new checkpoint id)."""
    if since is not None and since not in checkpoints(system, vm_id):
        raise CheckpointGone(vm_name, since)
    service = _vm(system, vm_id).backups_service()
    try:
        added = service.add(
            types.Backup(
                disks=[types.Disk(id=d) for d in disk_ids],
                from_checkpoint_id=since,
                description=transfers.mark(vm_id),
            )
        )
    except sdk.Error as exc:
        if since is not None and since not in checkpoints(system, vm_id):
            raise CheckpointGone(vm_name, since) from None
        raise ProviderError(f"oVirt refused a backup of VM {vm_name}: {exc}") from None
    backup_id = str(added.id)
    try:
        got = _wait(system, vm_id, backup_id, {types.BackupPhase.READY} | _ENDED)
        if got is None or got.phase != types.BackupPhase.READY:
            phase = got.phase if got is not None else "gone"
            raise ProviderError(f"oVirt backup of VM {vm_name} did not become ready ({phase})")
        if not got.to_checkpoint_id:
            raise ProviderError(
                f"oVirt backup of VM {vm_name} took no checkpoint: no disk tracks changes "
                "(qcow2 disks with incremental backup enabled)"
            )
    except BaseException:
        with contextlib.suppress(Exception):
            finalize(system, vm_id, backup_id)
        raise
    return backup_id, str(got.to_checkpoint_id)


def _wait(system: Any, vm_id: str, backup_id: str, phases: set[Any]) -> Any | None:
    """The backup once in one of ``phases``; None when the engine forgot it."""
    one = _vm(system, vm_id).backups_service().backup_service(backup_id)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            got = one.get()
        except sdk.NotFoundError:
            return None
        if got.phase in phases:
            return got
        if time.monotonic() > deadline:
            raise ProviderError(f"oVirt backup {backup_id} stayed {got.phase}")
        time.sleep(POLL)


def finalize(system: Any, vm_id: str, backup_id: str) -> None:
    """End the backup (once it is ready: the engine finalizes nothing else) and wait
    until it has ended; a backup that failed or is gone is already over."""
    got = _wait(system, vm_id, backup_id, {types.BackupPhase.READY} | _ENDED)
    if got is None or got.phase in _ENDED:
        return
    one = _vm(system, vm_id).backups_service().backup_service(backup_id)
    with contextlib.suppress(sdk.NotFoundError):
        one.finalize()
    _wait(system, vm_id, backup_id, _ENDED)


def leftovers(system: Any, vm_id: str) -> list[str]:
    """Backups Ferry added on ``vm_id`` that have not ended."""
    found = _vm(system, vm_id).backups_service().list()
    return [
        str(b.id)
        for b in found
        if (b.description or "") == transfers.mark(vm_id) and b.phase not in _ENDED
    ]


def end_leftovers(system: Any, vm_id: str) -> list[str]:
    """End what a killed run left on ``vm_id``: its image transfers, then its backups."""
    transfers.cancel_leftovers(system, vm_id)
    left = leftovers(system, vm_id)
    for backup_id in left:
        finalize(system, vm_id, backup_id)
    return left


def take_over(
    system: Any, vm_id: str, disk_ids: list[str], since: str | None
) -> tuple[str, str] | None:
    """The backup a killed run of this round left, if one did: (its id, its checkpoint).

    The killed run's image transfers are cancelled (a new reader opens its own); every
    other backup it left is finalized, and every one when the VM is not up. None: no
    such backup, start one.
    """
    if _vm(system, vm_id).get().status != types.VmStatus.UP:
        end_leftovers(system, vm_id)  # (its transfers first, as below)
        return None
    transfers.cancel_leftovers(system, vm_id)
    found: tuple[str, str] | None = None
    for backup_id in leftovers(system, vm_id):
        got = _wait(system, vm_id, backup_id, {types.BackupPhase.READY} | _ENDED)
        if found is None and got is not None and _same_round(system, vm_id, got, disk_ids, since):
            found = (backup_id, str(got.to_checkpoint_id))
        else:
            finalize(system, vm_id, backup_id)
    return found


def _same_round(system: Any, vm_id: str, got: Any, disk_ids: list[str], since: str | None) -> bool:
    if got.phase != types.BackupPhase.READY or not got.to_checkpoint_id:
        return False
    if (got.from_checkpoint_id or None) != since:
        return False
    one = _vm(system, vm_id).backups_service().backup_service(str(got.id))
    try:
        disks = one.disks_service().list()
    except sdk.NotFoundError:
        return False
    return sorted(str(d.id) for d in disks) == sorted(disk_ids)


def remove_checkpoint(system: Any, vm_id: str, checkpoint: str) -> None:
    """Remove ``checkpoint``; one already gone is no error."""
    end_leftovers(system, vm_id)  # a killed round's backup would refuse the removal
    one = _vm(system, vm_id).checkpoints_service().checkpoint_service(checkpoint)
    with contextlib.suppress(sdk.NotFoundError):
        one.remove()
