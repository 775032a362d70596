"""Operator mode: the cluster's ferry.dev objects are what people hand to Ferry.

On (``FERRY_CONTROLLER__OPERATOR__ENABLED``; the chart turns it on with the
kubernetes platform), the active controller lists and watches Provider, maps,
Hook, Budget, Plan and Migration objects in the configured namespaces through
the platform's kubernetes connection (:func:`ferry.platform.factory.cluster_objects`)
and applies them to the objects bucket as ``ferry apply`` does (:mod:`.intake`),
then writes the bus's view back into their status (:mod:`.statuses`). While a
migration runs, it and what it uses carry a finalizer, so that deleting one waits
for it to end (:mod:`.finalizers`). Everything
else (admission, the scheduler, the itineraries) is the controller as it is
without a cluster: it still reads the bucket.
"""

from __future__ import annotations

import asyncio
import logging

from ferry.bus import Bus
from ferry.bus.tasks import cancel_and_wait
from ferry.migration_controller.operator.finalizers import Holds
from ferry.migration_controller.operator.intake import ORDER, RETRY_SECONDS, Intake, Known
from ferry.migration_controller.operator.statuses import Statuses
from ferry.migration_controller.settings import OperatorGroup
from ferry.platform.clusterobjects import ClusterObjects

log = logging.getLogger(__name__)

__all__ = ["Operator"]


class Operator:
    def __init__(self, bus: Bus, cluster: ClusterObjects, settings: OperatorGroup) -> None:
        self.settings = settings
        self.cluster = cluster
        self.known = Known()
        self.intake = Intake(bus, cluster, self.known)
        self.statuses = Statuses(bus, cluster, self.known)
        self.holds = Holds(bus, cluster, self.known)
        self.intake.before_start = self.holds.hold_new

    async def _between(self) -> None:
        """Before each round of statuses: ended deleted Migrations leave the bucket, then
        the finalizers follow what runs now."""
        await self.intake.finish_deletions()
        await self.holds.reconcile()

    async def _synced(self, namespace: str) -> dict[str, str]:
        while True:
            try:
                return await self.intake.sync(namespace)
            except Exception as error:
                where = namespace or "every namespace"
                log.warning("operator: listing in %s failed (%s); trying again", where, error)
                await asyncio.sleep(RETRY_SECONDS)

    async def run(self) -> None:
        """List, then watch every kind in every namespace and write statuses, until cancelled."""
        settings = self.settings
        loops: list[asyncio.Task[None]] = []
        try:
            for namespace in settings.watched:
                versions = await self._synced(namespace)
                loops.extend(
                    asyncio.create_task(
                        self.intake.follow(kind, namespace, versions[kind], settings.watch_seconds),
                        name=f"operator-watch-{kind}",
                    )
                    for kind in ORDER
                )
            log.info(
                "operator: watching %s", ", ".join(n or "every namespace" for n in settings.watched)
            )
            loops.append(
                asyncio.create_task(
                    self.statuses.run(settings.status_seconds, self._between),
                    name="operator-statuses",
                )
            )
            await asyncio.gather(*loops)
        finally:
            await cancel_and_wait(*loops)
            await self.cluster.aclose()
