"""The controller's way to the sources: one provider per Provider object, opened on first use.

The controller asks a source for three things: its inventory when a migration
is admitted, and its power (state, shutdown, power-on) in the steps it owns and
when it restores a failed VM's source. Providers are opened the way every
service opens them (:class:`ferry.runtime.providers.Providers`: the Provider
object and its secret), or by a lookup the caller hands in (the tests' sources
keep their power in files), and kept, so that one connection serves every VM
of a source; closed when it failed, when its Provider object changed (a new
``url``, settings or secret applied: the next use opens the source anew), when
the files of its mounted Secret changed (rotated on disk without a new apply:
the same) and when the controller stops.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ferry.bus import PermanentError
from ferry.proto.inventory import PowerState
from ferry.proto.inventory import Vm as InventoryVm
from ferry.proto.volume import SourceRef
from ferry.providers import base as providers_base
from ferry.runtime.providers import OpenProvider

PERMANENT = (PermanentError, providers_base.ProviderNotSupported, providers_base.VmNotFound)
"""Errors of a controller-owned step that no retry can fix."""

log = logging.getLogger(__name__)


Version = Callable[[str], Awaitable[Any]]
"""The stored Provider object's revision by name (``None`` when there is none), with
what identifies its mounted secret's files (:meth:`ferry.runtime.providers.Providers.version`)."""


class Sources:
    """Providers by Provider name, opened once by ``open`` and again when the object changed.

    ``version`` tells which revision of the Provider object a provider was opened
    from; without it (tests' own lookups) the reference's type and url stand for it.
    """

    def __init__(self, open_provider: OpenProvider, version: Version | None = None) -> None:
        self._open = open_provider
        self._version = version
        self._made: dict[str, tuple[providers_base.Provider, object]] = {}

    async def get(self, ref: SourceRef) -> providers_base.Provider:
        stamp = await self._version(ref.provider) if self._version else (ref.type, ref.url)
        got = self._made.get(ref.provider)
        if got is not None and got[1] == stamp:
            return got[0]
        if got is not None:
            log.info(
                "provider %s (its object or its secret's files) changed since it was opened: "
                "opening it anew",
                ref.provider,
            )
            await self.forget(ref.provider)
        opened = await self._open(ref)
        self._made[ref.provider] = (opened, stamp)
        return opened

    async def forget(self, name: str) -> None:
        """Drop a provider that failed, so that the next use opens a fresh one; close it."""
        got = self._made.pop(name, None)
        await _close(got[0] if got else None)

    async def close(self) -> None:
        """Close every provider (a vSphere session logs out, a libvirt connection closes)."""
        made, self._made = [p for p, _ in self._made.values()], {}
        for provider in made:
            await _close(provider)

    def lazy(self, ref: SourceRef) -> LazySource:
        return LazySource(lambda: self.get(ref))


async def _close(provider: object) -> None:
    """A provider's ``close`` if it has one; a failure to close is logged, never raised."""
    close = getattr(provider, "close", None)
    if close is None:
        return
    try:
        await close()
    except Exception as err:
        log.warning("closing a source failed: %s", err)


class LazySource:
    """The provider of a VM, opened on first use (service-owned steps never need it)."""

    def __init__(self, make: Callable[[], Awaitable[providers_base.Provider]]) -> None:
        self._make = make

    async def power_state(self, vm: InventoryVm) -> PowerState:
        return await (await self._make()).power_state(vm)

    async def shutdown(self, vm: InventoryVm, timeout: float) -> bool:  # noqa: ASYNC109
        return await (await self._make()).shutdown(vm, timeout)

    async def power_on(self, vm: InventoryVm) -> None:
        await (await self._make()).power_on(vm)
