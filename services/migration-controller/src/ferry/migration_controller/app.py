"""The migration-controller process: its parts, wired, and run as one :class:`Runnable`.

* The **command router** takes ``migration.start`` (admission), and
  ``migration.cancel`` / ``migration.cutover`` (reactions) from its work queue.
* The **event router** is a durable consumer of the events stream: the other
  services' results advance the VMs (reactions).
* The **scheduler** starts queued VMs as slots free up, across every plan
  (``maxInFlight`` per plan, ``maxInFlightPerHost`` per source host, and the
  Budgets all plans share), and says in each Plan's status what holds the rest.
* The **timers** wake VMs whose retry backoff ran out or whose warm pause ended.
* The **inventory** loop reads every source and publishes what it holds (the console's view).
* The **driver** is where every change goes: the engine changes the VM's state,
  the state is stored, then the engine's actions are carried out.
* The **operator** (operator mode, on in a cluster) applies the cluster's ferry.dev
  objects to the objects bucket and writes each one's status back (:mod:`.operator`).
* **Completion** puts back what a failed or canceled VM changed, and ends the
  migration when its last VM ended.

Replicas are active / standby (:mod:`.leadership`): only the one holding the
lease resumes and serves. A part that needs another gets it in its constructor; none reaches into
another's tables. On start-up :meth:`Controller.resume` reloads every VM and
re-runs the step each one was in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial

from ferry.bus import Bus, Intake, Observer, Router
from ferry.bus.tasks import cancel_and_wait
from ferry.migration_controller import engine, leadership, steps
from ferry.migration_controller.admission import Admission
from ferry.migration_controller.completion import Completion
from ferry.migration_controller.driver import Driver
from ferry.migration_controller.inventory import Inventory
from ferry.migration_controller.operator import Operator
from ferry.migration_controller.reactions import Reactions
from ferry.migration_controller.retention import Retention
from ferry.migration_controller.scheduler import Scheduler
from ferry.migration_controller.settings import ControllerSettings, Settings
from ferry.migration_controller.sources import Sources, Version
from ferry.migration_controller.store import Objects, VmStates
from ferry.migration_controller.timers import Timers
from ferry.platform import factory
from ferry.proto import objects, subjects
from ferry.proto.phases import StepStatus, VmStatus
from ferry.proto.state import VmState
from ferry.proto.subjects import Service
from ferry.runtime.providers import OpenProvider, Providers

log = logging.getLogger(__name__)


class Controller:
    """Two routers, a scheduler and timers around the driver; runs like a :class:`Router`."""

    def __init__(
        self,
        bus: Bus,
        settings: ControllerSettings,
        *,
        providers: OpenProvider | None = None,
        hooks: steps.Hooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.objects = Objects(bus)
        self.vms = VmStates(bus)
        version: Version = partial(self.objects.revision, "Provider")
        if providers is None:
            providers = Providers.mounted(bus, settings.providers, settings.data_dir)
            version = providers.version  # the object's revision and its secret's files
        self.sources = sources = Sources(providers, version=version)
        self.scheduler = Scheduler(self.vms.require, self.objects, clock)
        self.timers = Timers(clock)
        self.completion = Completion(
            bus,
            self.objects,
            self.scheduler,
            self.vms.require,
            sources,
            clock,
            forget=lambda name: self.forget(name),
        )
        self.driver = Driver(
            bus,
            settings,
            self.vms,
            scheduler=self.scheduler,
            timers=self.timers,
            completion=self.completion,
            sources=sources,
            hooks=hooks or steps.LocalHooks(partial(_hook_command, self.objects)),
            clock=clock,
        )
        self.admission = Admission(
            bus,
            settings,
            self.objects,
            self.vms,
            scheduler=self.scheduler,
            completion=self.completion,
            sources=sources,
            clock=clock,
        )
        self.inventory = Inventory(
            bus, self.objects, sources, settings.controller.inventory_refresh_seconds
        )
        self.reactions = Reactions(
            bus, settings, self.vms, scheduler=self.scheduler, driver=self.driver, clock=clock
        )
        self.retention = Retention(
            self.objects,
            self.vms,
            settings.controller.finished_retention_seconds,
            clock,
            removed=self._removed,
        )
        self.operator: Operator | None = None
        if settings.controller.operator.enabled:
            cluster = factory.cluster_objects(settings.platform.kubernetes)
            self.operator = Operator(bus, cluster, settings.controller.operator)
        self.commands = self._command_router()
        self.events = self._event_router()

    # -- routers ---------------------------------------------------------------------

    def _command_router(self) -> Router:
        router = Router(Service.CONTROLLER)
        self.admission.register(router)
        self.reactions.register_commands(router)
        return router

    def _event_router(self) -> Router:
        services = (Service.VOLUME, Service.CONVERSION, Service.VM)
        router = Router(
            Service.CONTROLLER,
            intake=Intake.events(
                durable=self.settings.controller.events_durable,
                filter_subjects=[subjects.events_of(s) for s in services],
            ),
        )
        self.reactions.register_events(router)
        return router

    # -- Runnable ----------------------------------------------------------------------

    async def run(
        self,
        bus: Bus,
        concurrency: int = 16,
        stop: asyncio.Event | None = None,
        grace_seconds: float = 30.0,
        observer: Observer | None = None,
        fetch_wait: float = 1.0,
    ) -> None:
        """Once active (:mod:`.leadership`), resume stored VMs and serve until ``stop``."""
        stop = stop or asyncio.Event()
        lead = leadership.Leadership(bus, self.settings.controller.leader_lease_seconds)
        if not await lead.acquire(stop):
            return
        holding = asyncio.create_task(lead.hold(), name="controller-lease")
        try:
            await self._serve(bus, holding, stop, concurrency, grace_seconds, observer, fetch_wait)
        finally:
            await cancel_and_wait(holding)  # a renewal's lost cancel must not keep it beating
            if not holding.cancelled() and isinstance(holding.exception(), leadership.LeaseLost):
                log.error("controller %s lost its lease to another replica; stopped", lead.owner)
            else:
                await lead.release()

    async def _serve(
        self,
        bus: Bus,
        holding: asyncio.Task[None],
        stop: asyncio.Event,
        concurrency: int,
        grace_seconds: float,
        observer: Observer | None,
        fetch_wait: float,
    ) -> None:
        await self.resume()
        loops = [
            asyncio.create_task(self.scheduler.run(self.driver.start), name="controller-scheduler"),
            asyncio.create_task(self.timers.run(self.driver.tick), name="controller-timer"),
            asyncio.create_task(self.scheduler.report(), name="controller-waiting"),
            asyncio.create_task(self.retention.run(), name="controller-retention"),
        ]
        if self.settings.controller.inventory_refresh_seconds > 0:
            loops.append(asyncio.create_task(self.inventory.run(), name="controller-inventory"))
        if self.operator is not None:  # only the active replica reads and writes the cluster
            loops.append(asyncio.create_task(self.operator.run(), name="controller-operator"))
        routers = [
            asyncio.create_task(
                router.run(bus, concurrency, stop, grace_seconds, observer, fetch_wait)
            )
            for router in (self.commands, self.events)
        ]
        try:
            await asyncio.wait(
                [*routers, holding, asyncio.create_task(stop.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            stop.set()
            await asyncio.gather(*routers, return_exceptions=True)
        finally:
            await cancel_and_wait(*loops, *self.driver.tasks())
            await self.sources.close()

    async def resume(self) -> None:
        """Pick every stored VM up where it was; nothing finished runs again."""
        states = await self._unfinished(await self.vms.load_all())
        await self.scheduler.load_budgets()
        for plan in {s.plan for s in states}:
            await self.scheduler.load_limits(plan)
        for state in sorted(states, key=lambda s: (s.migration, s.seq)):
            self.scheduler.index(state)
        driver = self.driver
        for state in states:
            key = self.vms.key(state.migration, state.vm)
            if state.status.ended:
                if not state.finalized:
                    driver.spawn(driver.perform(key, engine.finish_actions(state)))
                continue
            cur = state.current
            if state.status is not VmStatus.RUNNING or cur is None:
                continue
            if cur.status is StepStatus.RUNNING and cur.wait_until:
                at = min(cur.wait_until, state.cutover) if state.cutover else cur.wait_until
                self.timers.wake(key, at)
            elif cur.status is StepStatus.RUNNING:
                driver.spawn(driver.run_step(key, cur.name, cur.attempt))
            else:
                self.timers.wake(key, cur.retry_at)
        for name in {s.migration for s in states}:
            driver.spawn(self.admission.finish_start(name))
        self.scheduler.kick()
        log.info("resumed %d VMs", len(states))

    async def _unfinished(self, states: list[VmState]) -> list[VmState]:
        """The states of migrations still going; ended ones leave memory at once."""
        by_migration: dict[str, list[VmState]] = {}
        for state in states:
            by_migration.setdefault(state.migration, []).append(state)
        keep = []
        for name, group in by_migration.items():
            mig = await self.objects.find(objects.Migration, name)
            over = mig is not None and mig.status.phase.ended
            if over and all(s.status.ended and s.finalized for s in group):
                self.vms.forget([self.vms.key(name, s.vm) for s in group])
            else:
                keep.extend(group)
        return keep

    def forget(self, migration: str) -> None:
        """An ended migration's VMs leave memory: it must not grow with finished waves."""
        keys = self.scheduler.forget(migration)
        self.vms.forget(keys)
        self.driver.forget(keys)

    def _removed(self, migration: str, keys: list[str]) -> None:
        """The retention removed an ended migration's VMs: nothing of it stays in memory
        (a lock still held when the migration ended is dropped now)."""
        self.forget(migration)
        self.driver.forget(keys)
        self.completion.forget(migration)


async def _hook_command(store: Objects, name: str) -> tuple[list[str], int]:
    hook = await store.get(objects.Hook, name)
    return list(hook.spec.command), hook.spec.deadline


def build_router(
    bus: Bus,
    settings: ControllerSettings,
    *,
    providers: OpenProvider | None = None,
    hooks: steps.Hooks | None = None,
) -> Controller:
    """The controller as the runtime runs it: ``await build_router(bus, s).run(bus, …)``.

    It is not a single :class:`ferry.bus.Router` (it has two intakes, a scheduler
    and timers) but runs with the same ``run(bus, concurrency, stop, grace_seconds,
    observer)`` signature (:class:`ferry.runtime.Runnable`).
    """
    return Controller(bus, settings, providers=providers, hooks=hooks)


__all__ = ["Controller", "Settings", "build_router"]
