"""The controller's way to the sources: one provider per Provider object, made on first use.

The controller asks a source for three things: its inventory when a migration
is admitted, and its power (state, shutdown, power-on) in the steps it owns and
when it restores a failed VM's source. Providers are made by a factory the
caller can replace (the tests' sources keep their power in files) and kept, so
that one connection serves every VM of a source.
"""

from __future__ import annotations

from collections.abc import Callable

from ferry.bus import PermanentError
from ferry.proto.inventory import PowerState
from ferry.proto.inventory import Vm as InventoryVm
from ferry.proto.volume import SourceRef
from ferry.providers import base as providers_base
from ferry.providers import factory as providers_factory

ProviderFactory = Callable[[SourceRef], providers_base.Provider]

PERMANENT = (PermanentError, providers_base.ProviderNotSupported, providers_base.VmNotFound)
"""Errors of a controller-owned step that no retry can fix."""


def default_providers(ref: SourceRef) -> providers_base.Provider:
    # Secrets are referenced by the Provider object; the local stack's providers so far
    # (OVA) need none, so none is read here.
    return providers_factory.create(ref)


class Sources:
    """Providers by Provider name, made once by ``make``."""

    def __init__(self, make: ProviderFactory = default_providers) -> None:
        self._make = make
        self._made: dict[str, providers_base.Provider] = {}

    def get(self, ref: SourceRef) -> providers_base.Provider:
        got = self._made.get(ref.provider)
        if got is None:
            got = self._make(ref)
            self._made[ref.provider] = got
        return got

    def forget(self, name: str) -> None:
        """Drop a provider that failed, so that the next use makes a fresh one."""
        self._made.pop(name, None)

    def lazy(self, ref: SourceRef) -> LazySource:
        return LazySource(lambda: self.get(ref))


class LazySource:
    """The provider of a VM, built on first use (service-owned steps never need it)."""

    def __init__(self, make: Callable[[], providers_base.Provider]) -> None:
        self._make = make

    async def power_state(self, vm: InventoryVm) -> PowerState:
        return await self._make().power_state(vm)

    async def shutdown(self, vm: InventoryVm, timeout: float) -> bool:  # noqa: ASYNC109
        return await self._make().shutdown(vm, timeout)

    async def power_on(self, vm: InventoryVm) -> None:
        await self._make().power_on(vm)
