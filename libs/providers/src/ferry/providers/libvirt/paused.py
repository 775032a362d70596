"""A shut-off domain whose files Ferry does not open: read through the domain started paused.

When Ferry reads a host's backup jobs over TLS (:mod:`.exports`: a remote host), a
shut-off domain's disk files are on that host, not here. libvirt then starts the
domain with its virtual CPUs stopped (``VIR_DOMAIN_START_PAUSED``): QEMU opens the
disks and loads their persistent dirty bitmaps, the guest runs no instruction and
so writes nothing, and a backup job serves the disks exactly as a running domain's
(:class:`PausedView`). The domain is destroyed when the view closes, which leaves it
shut off as it was found (QEMU stores the bitmaps back into the qcow2 files on the
way out). This is how the cutover's last delta and a cold copy read a remote host's
shut-off VM; a checkpoint of it is removed the same way (:func:`started_paused`).

Nothing changes while the domain cannot run, so the view takes no new checkpoint:
its :attr:`PausedView.checkpoint` is the one it counts from. A domain that is running
when the view starts is refused (someone started it meanwhile: not Ferry's to stop).
Ferry's paused start carries a live metadata element (gone when the domain stops), so
one a killed Ferry left paused is recognised and destroyed before the next look at
the domain (:func:`end_leftover`); only a kill in the instant between the start and
the marking escapes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Self

import libvirt

from ferry.proto.inventory import Extent, Vm
from ferry.providers.base import NbdTls, ProviderError, VmNotFound
from ferry.providers.libvirt.backup import Backup, settle
from ferry.providers.libvirt.client import Client, describe

MARK_URI = "https://ferry.dev/xmlns/libvirt/paused"
_OPEN: set[str] = set()  # UUIDs of domains this process holds started paused
_LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
_ELEMENT = libvirt.VIR_DOMAIN_METADATA_ELEMENT


def start(dom: libvirt.virDomain, name: str) -> None:
    """Start the shut-off ``dom`` with its CPUs stopped, marked as Ferry's (blocking)."""
    if dom.isActive():
        raise ProviderError(f"VM {name} was started meanwhile: Ferry reads it only while off")
    try:
        _OPEN.add(dom.UUIDString())
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        dom.setMetadata(_ELEMENT, "<paused/>", "ferry", MARK_URI, _LIVE)
    except libvirt.libvirtError as exc:
        stop(dom)
        raise ProviderError(
            f"VM {name} is off and could not be started paused to read its disks: {describe(exc)}"
        ) from None


def ours(dom: libvirt.virDomain) -> bool:
    """True when ``dom`` runs because a Ferry started it paused (blocking)."""
    try:
        return bool(dom.isActive()) and bool(dom.metadata(_ELEMENT, MARK_URI, _LIVE))
    except libvirt.libvirtError:
        return False  # no mark: not Ferry's start


def held_here(dom: libvirt.virDomain) -> bool:
    return str(dom.UUIDString()) in _OPEN


def end_leftover(dom: libvirt.virDomain) -> bool:
    """Destroy ``dom`` when a killed Ferry left it started paused (not this process's
    open view); True when it did."""
    if held_here(dom) or not ours(dom):
        return False
    stop(dom)
    return True


def stop(dom: libvirt.virDomain) -> None:
    """Destroy the paused domain again (blocking); one already off is left so."""
    with contextlib.suppress(libvirt.libvirtError):
        if dom.isActive():
            dom.destroy()
    with contextlib.suppress(libvirt.libvirtError):
        _OPEN.discard(dom.UUIDString())


@contextlib.contextmanager
def started_paused(dom: libvirt.virDomain, name: str) -> Iterator[None]:
    """The block with ``dom`` up and paused, off again after it (blocking)."""
    start(dom, name)
    try:
        yield
    finally:
        stop(dom)


class PausedView:
    """A :class:`ferry.providers.base.ChangedDisks` of a shut-off domain: a backup job
    (``checkpoint=False``) of the domain started paused, destroyed on the way out."""

    def __init__(self, client: Client, vm: Vm, inner: Backup) -> None:
        self._client = client
        self._vm = vm
        self._inner = inner
        self._started = False

    @property
    def checkpoint(self) -> str:
        return self._inner.since or ""

    @property
    def since(self) -> str | None:
        return self._inner.since

    async def __aenter__(self) -> Self:
        await settle(self._client.call(self._start))
        try:
            await self._inner.__aenter__()
        except BaseException:
            await settle(self._client.call(self._stop))
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await settle(self.close())

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            await self._client.call(self._stop)

    def _start(self) -> None:
        start(self._client.domain(self._vm.id), self._vm.name)
        self._started = True

    def _stop(self) -> None:
        if self._started:
            self._started = False
            with contextlib.suppress(VmNotFound):  # gone: nothing left to stop
                stop(self._client.domain(self._vm.id))

    def size(self, disk_id: str) -> int:
        return self._inner.size(disk_id)

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        return await self._inner.changed_extents(disk_id)

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        return await self._inner.read(disk_id, offset, length)

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        return self._inner.nbd_export(disk_id)

    def tls_export(self, disk_id: str) -> NbdTls | None:
        return self._inner.tls_export(disk_id)
