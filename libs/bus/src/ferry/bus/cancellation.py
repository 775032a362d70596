"""Cancellation requests, kept in the CANCEL bucket where every service sees them.

A cancel is state, not a message: a replica that starts after the request was
made must still see it, and a request must reach handlers that are already
running. So the request is a key in ``Bucket.CANCEL`` (``<migration>.<vm>`` for
one VM, ``<migration>._all`` for the whole migration) that every router
watches; deleting the key withdraws the request (e.g. before a re-run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from ferry.proto import envelope, subjects
from ferry.proto.subjects import Bucket

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

ALL_VMS = "_all"


class Cancellation(msgspec.Struct, frozen=True, kw_only=True):
    """Why and when a cancel was requested (routers only look at the key)."""

    reason: str = "canceled by user"
    requested_at: str = ""


def key(migration: str, vm: str | None = None) -> str:
    """The CANCEL key of one VM, or of the whole migration when ``vm`` is None or "*"."""
    if vm is None or vm == "*":
        return f"{subjects.token(migration)}.{ALL_VMS}"
    return subjects.vm_key(migration, vm)


def lane_keys(migration_token: str, vm_token: str) -> tuple[str, str]:
    """The two keys that cancel a message with these subject tokens."""
    return f"{migration_token}.{vm_token}", f"{migration_token}.{ALL_VMS}"


async def request(
    bus: Bus, migration: str, vm: str | None = None, reason: str = "canceled by user"
) -> None:
    """Ask every service to stop work on a VM (or a whole migration)."""
    value = Cancellation(reason=reason, requested_at=envelope.now())
    await bus.kv(Bucket.CANCEL, Cancellation).put(key(migration, vm), value)


async def withdraw(bus: Bus, migration: str, vm: str | None = None) -> None:
    """Remove a cancel request so that the VM may run again."""
    await bus.kv(Bucket.CANCEL, Cancellation).delete(key(migration, vm))


async def is_requested(bus: Bus, migration: str, vm: str | None = None) -> bool:
    kv = bus.kv(Bucket.CANCEL, Cancellation)
    if await kv.get(key(migration, None)) is not None:
        return True
    return vm is not None and vm != "*" and await kv.get(key(migration, vm)) is not None
