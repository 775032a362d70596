"""Image transfers: the engine's handle on an imageio ticket, opened and always closed.

A download transfer is added for one disk (``format=raw``: guest bytes), waited on until
the engine says ``transferring`` and gives its ``transfer_url``, and closed with
``finalize`` after a good read or ``cancel`` otherwise; closing waits until the engine
reports a finished phase or forgets the transfer, so its ticket is gone from the
daemon when this returns. Each transfer carries ``ferry:VM-ID`` as its description, so
one a killed Ferry left behind is found and cancelled before a new one is added
(:func:`cancel_leftovers`): never two transfers, never one left behind.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ovirtsdk4 as sdk
from ovirtsdk4 import types

from ferry.providers.base import ProviderError

MARK = "ferry:"
POLL = 0.2
WAIT_SECONDS = 120.0
_FAILED = {
    types.ImageTransferPhase.CANCELLED,
    types.ImageTransferPhase.CANCELLED_SYSTEM,
    types.ImageTransferPhase.CANCELLED_USER,
    types.ImageTransferPhase.FINALIZING_FAILURE,
    types.ImageTransferPhase.FINISHED_FAILURE,
    types.ImageTransferPhase.PAUSED_SYSTEM,
}
_FINISHED = {
    types.ImageTransferPhase.FINISHED_SUCCESS,
    types.ImageTransferPhase.FINISHED_FAILURE,
    types.ImageTransferPhase.FINISHED_CLEANUP,
}


def mark(vm_id: str) -> str:
    return MARK + vm_id


def start(
    system: Any, vm_id: str, disk_id: str, inactivity: int = 120, backup: str | None = None
) -> tuple[str, str]:
    """Add a raw download of ``disk_id`` (from ``backup``'s export when given: the disk
    as that backup saw it); (transfer id, transfer url) once it transfers."""
    service = system.image_transfers_service()
    try:
        added = service.add(
            types.ImageTransfer(
                disk=types.Disk(id=disk_id),
                direction=types.ImageTransferDirection.DOWNLOAD,
                format=types.DiskFormat.RAW,
                inactivity_timeout=inactivity,
                description=mark(vm_id),
                backup=types.Backup(id=backup) if backup else None,
            )
        )
    except sdk.Error as exc:
        raise ProviderError(f"oVirt refused an image transfer of disk {disk_id}: {exc}") from exc
    one = service.image_transfer_service(added.id)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        got = one.get()
        if got.phase == types.ImageTransferPhase.TRANSFERRING and got.transfer_url:
            return str(added.id), str(got.transfer_url)
        if got.phase in _FAILED or time.monotonic() > deadline:
            close(system, str(added.id), ok=False)
            raise ProviderError(
                f"oVirt image transfer of disk {disk_id} did not start (phase {got.phase})"
            )
        time.sleep(POLL)


def close(system: Any, transfer_id: str, *, ok: bool) -> None:
    """Finalize (``ok``) or cancel the transfer, and wait until the engine ended it."""
    one = system.image_transfers_service().image_transfer_service(transfer_id)
    try:
        (one.finalize if ok else one.cancel)()
    except sdk.NotFoundError:
        return
    except sdk.Error:
        if ok:  # cannot finalize (phase moved on): make sure it ends anyway
            with contextlib.suppress(sdk.Error):
                one.cancel()
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            got = one.get()
        except sdk.NotFoundError:
            return
        if got.phase in _FINISHED:
            if ok and got.phase != types.ImageTransferPhase.FINISHED_SUCCESS:
                raise ProviderError(f"oVirt image transfer {transfer_id} ended {got.phase}")
            return
        time.sleep(POLL)
    raise ProviderError(f"oVirt image transfer {transfer_id} did not end")


def ours(system: Any, vm_id: str, disk_id: str = "") -> list[str]:
    """Transfers Ferry added for ``vm_id`` (of its disk ``disk_id`` when given) that have
    not ended."""
    found = system.image_transfers_service().list()
    return [
        str(t.id)
        for t in found
        if (t.description or "") == mark(vm_id)
        and t.phase not in _FINISHED
        and (not disk_id or (t.disk is not None and t.disk.id == disk_id))
    ]


def cancel_leftovers(system: Any, vm_id: str, disk_id: str = "") -> list[str]:
    """Cancel what a killed run left on ``vm_id`` (on its disk ``disk_id`` when given: a
    disk's reader must not end the transfer another disk's reader of the same VM holds);
    the ids cancelled."""
    left = ours(system, vm_id, disk_id)
    for transfer_id in left:
        close(system, transfer_id, ok=False)
    return left
