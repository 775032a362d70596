"""The controller's integration stack: the other services as test Routers on a real
nats-server, and the controller in this process (:class:`Stack`), for the tests and
their fixtures. A module of its own, not the ``conftest``: another test directory's
``conftest`` may be the one imported under that name when both are collected."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from controller_harness import (
    TOPOLOGY,
    FileProvider,
    Services,
    apply,
    eventually,
    migration_doc,
    providers_for,
)

from ferry.bus import Bus
from ferry.migration_controller import app
from ferry.migration_controller.settings import ControllerGroup, ControllerSettings
from ferry.proto import migration
from ferry.proto.subjects import Bucket

END = ("Succeeded", "Failed", "Canceled", "Rejected")


def controller_settings(url: str) -> ControllerSettings:
    return ControllerSettings(
        nats={"url": url},  # type: ignore[arg-type]
        bus={"max_deliver": TOPOLOGY.max_deliver, "ack_wait_seconds": TOPOLOGY.ack_wait_seconds},  # type: ignore[arg-type]
        controller=ControllerGroup(
            retry_base_seconds=0.2, progress_min_interval_seconds=0.0, leader_lease_seconds=2.0
        ),
    )


class Stack:
    """The services (test handlers) and, unless told otherwise, the controller, running."""

    def __init__(self, bus: Bus, url: str, tmp: Path) -> None:
        self.bus, self.url, self.tmp = bus, url, tmp
        self.services = Services()
        self.sources: dict[str, FileProvider] = {}
        self.ova_sources: dict[str, Path] = {}  # real OVA providers: name -> import directory
        self._stops: list[asyncio.Event] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self.controller: app.Controller | None = None

    def source(self, name: str, vms: list[Any]) -> FileProvider:
        provider = FileProvider.create(self.tmp / "sources" / name, vms)
        self.sources[name] = provider
        return provider

    def run_services(self) -> None:
        for router in self.services.routers:
            stop = asyncio.Event()
            self._stops.append(stop)
            self._tasks.append(
                asyncio.create_task(router.run(self.bus, concurrency=32, stop=stop, fetch_wait=0.2))
            )

    def run_controller(self) -> app.Controller:
        roots = {name: p.root for name, p in self.sources.items()}
        ctl = app.build_router(
            self.bus,
            controller_settings(self.url),
            providers=providers_for(roots, self.ova_sources),
        )
        stop = asyncio.Event()
        self._stops.append(stop)
        self._tasks.append(
            asyncio.create_task(ctl.run(self.bus, concurrency=32, stop=stop, fetch_wait=0.2))
        )
        self.controller = ctl
        return ctl

    async def close(self) -> None:
        for stop in self._stops:
            stop.set()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 60)

    async def migrate(self, name: str, plan: str = "plan1", cutover: str | None = None) -> None:
        await apply(self.bus, [migration_doc(name, plan, cutover)])
        await self.bus.publish(migration.StartMigration(plan=plan, migration=name, vm="*"))

    async def migration(self, name: str) -> dict[str, Any]:
        entry = await self.bus.kv(Bucket.OBJECTS, dict).get(f"migration.{name}")
        assert entry is not None
        return entry.value

    async def wait_end(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        async def ended() -> bool:
            return (await self.migration(name)).get("status", {}).get("phase") in END

        await eventually(ended, timeout=timeout, what=f"migration {name} ends")
        return await self.migration(name)

    async def vms(self, name: str) -> dict[str, dict[str, Any]]:
        kv = self.bus.kv(Bucket.VMS, dict)
        out = {}
        for key in await kv.keys(f"{name}."):
            entry = await kv.get(key)
            assert entry is not None
            out[entry.value["vm"]] = entry.value
        return out

    async def events(self, name: str | None = None) -> list[tuple[str, Any]]:
        out = []
        async for env, msg in self.bus.events(follow=False):
            if name is None or msg.migration == name:
                out.append((env.type, msg))
        return out
