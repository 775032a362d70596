"""The controller in operator mode against the cluster stand-in, for the operator's tests.

A real nats-server (the test's), the controller (this process, operator mode on,
its kubernetes connection the stand-in's URL), the other services as the
controller tests' scripted Routers (``controller_harness``), and the stand-in with
Ferry's CRDs (``make crds``) installed. ``Operated.api`` is Ferry's own client of
those objects, what a user's ``kubectl`` would be.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

from controller_harness import (
    TOPOLOGY,
    FileProvider,
    Services,
    documents,
    eventually,
    make_vm,
    providers_for,
)

from ferry.bus import Bus, declare
from ferry.migration_controller import app
from ferry.migration_controller.settings import (
    ControllerGroup,
    ControllerSettings,
    OperatorGroup,
)
from ferry.platform import crdgen, factory
from ferry.platform.clusterobjects import ClusterObjects
from ferry.platform.settings import KubernetesSettings, PlatformSettings
from ferry.proto import subjects
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket, Service
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.cluster.resources import Kind

NS = "default"
OTHER = "team-b"  # a second namespace, with objects of the same names as NS's
__all__ = ["NS", "Operated", "Services", "documents", "eventually", "operated", "placed"]


def placed(docs: list[dict[str, Any]], namespace: str = NS) -> list[dict[str, Any]]:
    """The harness's documents as cluster objects: each in ``namespace``."""
    return [{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in docs]


def runs_as(name: str, namespace: str = NS) -> str:
    """The migration id of the cluster's Migration ``namespace``/``name``."""
    return f"{namespace}.{name}"


class Operated:
    def __init__(self, bus: Bus, cluster: Cluster, api: ClusterObjects, services: Services):
        self.bus, self.cluster, self.api, self.services = bus, cluster, api, services
        self.controller: app.Controller | None = None

    def kind(self, plural: str) -> Kind:
        return self.cluster.store.kind("ferry.dev", "v1alpha1", plural)

    async def bucket(self, kind: str, name: str, namespace: str = NS) -> dict[str, Any] | None:
        """The objects bucket's copy of the cluster object ``namespace``/``name``: under
        the two joined (``<namespace>.<name>``), as the operator keeps it."""
        key = subjects.object_key(kind, f"{namespace}.{name}")
        entry = await self.bus.kv(Bucket.OBJECTS, dict).get(key)
        return None if entry is None else dict(entry.value)

    async def in_cluster(self, kind: str, name: str, namespace: str = NS) -> dict[str, Any]:
        found = await self.api.get(kind, namespace, name)
        assert found is not None, f"{kind} {name} is not in the cluster"
        return found

    async def condition(self, kind: str, name: str, kind_of: str = "Ready") -> dict[str, Any]:
        """The object's condition of ``kind_of`` once the operator wrote one."""
        found: dict[str, Any] = {}

        async def written() -> bool:
            doc = await self.in_cluster(kind, name)
            conditions = (doc.get("status") or {}).get("conditions") or []
            found.update(next((c for c in conditions if c["type"] == kind_of), {}))
            return bool(found)

        await eventually(written, timeout=20, what=f"{kind} {name} has a {kind_of} condition")
        return found

    async def status_rounds(self, n: int) -> None:
        """Wait until the operator's status writer went over every object ``n`` more times."""
        assert self.controller is not None and self.controller.operator is not None
        statuses = self.controller.operator.statuses
        start = statuses.rounds
        await eventually(lambda: statuses.rounds >= start + n, timeout=30, what="status rounds")

    async def events(self, migration: str) -> list[str]:
        return [
            env.type
            async for env, msg in self.bus.events(follow=False)
            if getattr(msg, "migration", "") == migration
        ]


def controller_settings(url: str, cluster_url: str) -> ControllerSettings:
    return ControllerSettings(
        nats={"url": url},  # type: ignore[arg-type]
        bus={"max_deliver": TOPOLOGY.max_deliver, "ack_wait_seconds": TOPOLOGY.ack_wait_seconds},  # type: ignore[arg-type]
        controller=ControllerGroup(
            retry_base_seconds=0.2,
            progress_min_interval_seconds=0.0,
            leader_lease_seconds=2.0,
            inventory_refresh_seconds=0,
            operator=OperatorGroup(enabled=True, status_seconds=0.2, watch_seconds=30),
        ),
        platform=PlatformSettings(kubernetes=KubernetesSettings(host=cluster_url)),
    )


@asynccontextmanager
async def operated(
    nats_url: str,
    cluster: Cluster,
    tmp: Path,
    services: Services | None = None,
    first: Callable[[Bus], Awaitable[None]] | None = None,
) -> AsyncIterator[Operated]:
    """The controller in operator mode (and the scripted services) until the block ends;
    ``first`` runs on the bus before the controller starts."""
    for crd in crdgen.crds():
        cluster.install_crd(crd)
    source = FileProvider.create(tmp / "sources" / "src", [make_vm("id-a", ProviderType.OVA)])
    services = services or Services()
    stops: list[asyncio.Event] = []
    tasks: list[asyncio.Task[Any]] = []
    api = factory.cluster_objects(KubernetesSettings(host=cluster.url))
    async with await Bus.connect(nats_url, name="test", settings=TOPOLOGY) as bus:
        await declare(bus, TOPOLOGY, list(Service))
        for router in services.routers:
            stops.append(asyncio.Event())
            tasks.append(
                asyncio.create_task(router.run(bus, concurrency=8, stop=stops[-1], fetch_wait=0.2))
            )
        if first is not None:  # before the controller starts (a lease held elsewhere)
            await first(bus)
        made = Operated(bus, cluster, api, services)
        controller = app.build_router(
            bus,
            controller_settings(nats_url, cluster.url),
            # the source Provider "src" of either namespace, as the operator names it
            providers=providers_for({f"{ns}.src": source.root for ns in (NS, OTHER)}),
        )
        made.controller = controller
        stops.append(asyncio.Event())
        tasks.append(
            asyncio.create_task(controller.run(bus, concurrency=8, stop=stops[-1], fetch_wait=0.2))
        )
        try:
            yield made
        finally:
            for stop in stops:
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await api.aclose()
