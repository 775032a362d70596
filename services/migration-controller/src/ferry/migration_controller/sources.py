"""The controller's way to the sources: one provider per Provider object, opened on first use.

The controller asks a source for three things: its inventory when a migration
is admitted, and its power (state, shutdown, power-on) in the steps it owns and
when it restores a failed VM's source. Providers are opened the way every
service opens them (:class:`ferry.runtime.providers.Providers`: the Provider
object and its secret), or by a lookup the caller hands in (the tests' sources
keep their power in files), and kept, so that one connection serves every VM
of a source.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ferry.bus import PermanentError
from ferry.proto.inventory import PowerState
from ferry.proto.inventory import Vm as InventoryVm
from ferry.proto.volume import SourceRef
from ferry.providers import base as providers_base
from ferry.runtime.providers import OpenProvider

PERMANENT = (PermanentError, providers_base.ProviderNotSupported, providers_base.VmNotFound)
"""Errors of a controller-owned step that no retry can fix."""


class Sources:
    """Providers by Provider name, opened once by ``open``."""

    def __init__(self, open_provider: OpenProvider) -> None:
        self._open = open_provider
        self._made: dict[str, providers_base.Provider] = {}

    async def get(self, ref: SourceRef) -> providers_base.Provider:
        got = self._made.get(ref.provider)
        if got is None:
            got = await self._open(ref)
            self._made[ref.provider] = got
        return got

    def forget(self, name: str) -> None:
        """Drop a provider that failed, so that the next use opens a fresh one."""
        self._made.pop(name, None)

    def lazy(self, ref: SourceRef) -> LazySource:
        return LazySource(lambda: self.get(ref))


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
