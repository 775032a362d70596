"""The sources' inventory, read on a timer and published for whoever watches: the console.

People open the console to see what they could migrate, not only what already
moved. The controller is the one process that reads sources with their
secrets, so the active replica reads every source Provider's inventory every
``inventory_refresh_seconds`` and publishes it as ``InventoryRead`` on the audit
stream, where the console follows it. An unchanged inventory is the same
message (the same id), so a quiet source adds nothing to the stream within the
duplicate window. A source that cannot be read publishes why, with no VMs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ferry.bus import Bus, BusError
from ferry.migration_controller.sources import Sources
from ferry.migration_controller.store import ALL, Objects
from ferry.proto import migration, objects
from ferry.proto.inventory import ProviderType
from ferry.proto.volume import SourceRef

log = logging.getLogger(__name__)

MAX_VMS = 500  # per event, to stay well under NATS's payload limit; the rest are counted


class Inventory:
    def __init__(self, bus: Bus, objects_: Objects, sources: Sources, every: float) -> None:
        self._bus = bus
        self._objects = objects_
        self._sources = sources
        self._every = every

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Read and publish every source's inventory now, then every ``every`` seconds."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.read_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._every)

    async def read_all(self) -> None:
        for provider in await self._providers():
            try:
                await self._bus.publish(await self._read(provider))
            except BusError as bad:  # the next round tries again
                log.warning("inventory of %s not published: %s", provider.name, bad)

    async def _providers(self) -> list[objects.Provider]:
        found = []
        for key in await self._objects.kv.keys("provider."):
            entry = await self._objects.kv.get(key)
            if entry is None:
                continue
            try:
                obj = objects.from_document(entry.value)
            except ValueError as bad:
                log.warning("provider %s does not parse; its inventory is not read: %s", key, bad)
                continue
            if isinstance(obj, objects.Provider) and obj.spec.type is not ProviderType.KUBEVIRT:
                found.append(obj)
        return found

    async def _read(self, provider: objects.Provider) -> migration.InventoryRead:
        name, kind = provider.name, str(provider.spec.type)
        ref = SourceRef(provider=provider.name, type=provider.spec.type, url=provider.spec.url)
        try:
            source = await self._sources.get(ref)
            await source.check()
            vms = sorted(await source.inventory(), key=lambda v: (v.name, v.id))
        except Exception as bad:  # any failure of a source is shown, never fatal here
            await self._sources.forget(provider.name)
            why = str(bad) or type(bad).__name__
            return migration.InventoryRead(
                plan="", migration=ALL, vm=name, provider=name, source_type=kind, error=why
            )
        return migration.InventoryRead(
            plan="", migration=ALL, vm=name, provider=name, source_type=kind,
            vms=vms[:MAX_VMS], left_out=max(0, len(vms) - MAX_VMS),
        )  # fmt: skip
