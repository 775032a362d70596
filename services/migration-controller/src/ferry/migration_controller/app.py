"""The migration-controller process: two routers, a scheduler and a timer, around the engine.

* The **command router** takes ``migration.start`` / ``migration.cancel`` /
  ``migration.cutover`` from its work queue.
* The **event router** is a durable consumer of the events stream: the other
  services' results advance the VMs.
* The **scheduler** starts queued VMs as slots free up (``maxInFlight`` per plan,
  ``maxInFlightPerHost`` per source host).
* The **timer** wakes VMs whose retry backoff ran out or whose warm pause ended.

Every change goes through :meth:`Controller.transition`: the engine changes a
copy of the VM's state, the copy is stored with compare-and-set, and only then
are the engine's actions carried out. On start-up :meth:`Controller.resume`
reloads every VM and re-runs the step each one was in; the commands it sends
again have the ids they had the first time, so the bus drops the duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ferry.bus import Bus, Context, Intake, Observer, PermanentError, Router, cancellation
from ferry.migration_controller import engine, itinerary, planning, steps
from ferry.migration_controller.phases import Flow, StepStatus, VmStatus
from ferry.migration_controller.settings import ControllerSettings
from ferry.migration_controller.state import VmError, VmState, now_iso
from ferry.migration_controller.store import MissingObject, Objects, VmStates
from ferry.proto import conversion, migration, objects, subjects, vm, volume
from ferry.proto.base import Event, Failed, FailureOutcome, Message
from ferry.proto.inventory import PowerState
from ferry.proto.inventory import Vm as InventoryVm
from ferry.proto.subjects import Service
from ferry.proto.volume import SourceRef
from ferry.providers import base as providers_base
from ferry.providers import factory as providers_factory

log = logging.getLogger(__name__)

ALL = "*"
ProviderFactory = Callable[[SourceRef], providers_base.Provider]

COMPLETIONS: tuple[type[Event], ...] = (
    volume.VolumesCreated,
    volume.DisksAllocated,
    volume.DisksCopied,
    conversion.GuestConverted,
    vm.VmCreated,
    vm.VmRunning,
)
FAILURES: tuple[type[Failed], ...] = (
    volume.VolumeFailed,
    conversion.ConversionFailed,
    vm.VmServiceFailed,
)
PERMANENT_LOCAL = (PermanentError, providers_base.ProviderNotSupported, providers_base.VmNotFound)


def default_providers(ref: SourceRef) -> providers_base.Provider:
    # Secrets are referenced by the Provider object; the local stack's providers so far
    # (OVA) need none, so none is read here.
    return providers_factory.create(ref)


@dataclass(frozen=True)
class PlanLimits:
    max_in_flight: int = 20
    per_host: int = 10


class _LazySource:
    """The provider of a VM, built on first use (service-owned steps never need it)."""

    def __init__(self, make: Callable[[], providers_base.Provider]) -> None:
        self._make = make

    async def power_state(self, vm: InventoryVm) -> PowerState:
        return await self._make().power_state(vm)

    async def shutdown(self, vm: InventoryVm, timeout: float) -> bool:  # noqa: ASYNC109
        return await self._make().shutdown(vm, timeout)

    async def power_on(self, vm: InventoryVm) -> None:
        await self._make().power_on(vm)


class Controller(Router):
    """The controller's command router, which also runs its event router, scheduler and timer.

    It *is* a :class:`Router` (its own commands) so that the runtime runs it like
    any other service's router.
    """

    def __init__(
        self,
        bus: Bus,
        settings: ControllerSettings,
        *,
        providers: ProviderFactory = default_providers,
        hooks: steps.Hooks | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.objects = Objects(bus)
        self.vms = VmStates(bus)
        self._make_provider = providers
        self._providers: dict[str, providers_base.Provider] = {}
        self.hooks: steps.Hooks = hooks or steps.LocalHooks(self._hook_command)
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._queues: dict[str, list[str]] = {}
        self._limits: dict[str, PlanLimits] = {}
        self._active: set[str] = set()
        self._per_plan: Counter[str] = Counter()
        self._per_host: Counter[tuple[str, str]] = Counter()
        self._by_migration: dict[str, list[str]] = {}
        self._completed: set[str] = set()
        self._timers: list[tuple[float, str]] = []
        self._kick = asyncio.Event()
        self._timer_kick = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_progress: dict[str, float] = {}
        self._local: dict[str, asyncio.Task[steps.Outcome]] = {}
        super().__init__(Service.CONTROLLER)
        self.handler(migration.StartMigration, cancelable=False)(self._on_start)
        self.handler(migration.CancelMigration, cancelable=False)(self._on_cancel)
        self.handler(migration.Cutover, cancelable=False)(self._on_cutover)
        self.events = self._event_router()

    # -- routers ---------------------------------------------------------------

    def _event_router(self) -> Router:
        services = (Service.VOLUME, Service.CONVERSION, Service.VM)
        router = Router(
            Service.CONTROLLER,
            intake=Intake.events(
                durable=self.settings.controller.events_durable,
                filter_subjects=[subjects.events_of(s) for s in services],
            ),
        )
        for done in COMPLETIONS:
            router.handler(done, cancelable=False)(self._on_completed)
        for failed in FAILURES:
            router.handler(failed, cancelable=False)(self._on_failed)
        router.handler(volume.DiskProgress, cancelable=False)(self._on_disk_progress)
        router.handler(conversion.ConversionProgress, cancelable=False)(
            self._on_conversion_progress
        )
        return router

    async def run(
        self,
        bus: Bus,
        concurrency: int = 16,
        stop: asyncio.Event | None = None,
        grace_seconds: float = 30.0,
        observer: Observer | None = None,
        fetch_wait: float = 1.0,
    ) -> None:
        """Resume stored VMs, then serve both intakes until ``stop`` is set."""
        stop = stop or asyncio.Event()
        await self.resume()
        loops = [
            asyncio.create_task(self._schedule_loop(), name="controller-scheduler"),
            asyncio.create_task(self._timer_loop(), name="controller-timer"),
        ]
        routers = [
            asyncio.create_task(
                super().run(bus, concurrency, stop, grace_seconds, observer, fetch_wait)
            ),
            asyncio.create_task(
                self.events.run(bus, concurrency, stop, grace_seconds, observer, fetch_wait)
            ),
        ]
        try:
            await asyncio.wait(
                [*routers, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
            )
            stop.set()
            await asyncio.gather(*routers, return_exceptions=True)
        finally:
            for task in (*loops, *self._tasks):
                task.cancel()
            await asyncio.gather(*loops, *self._tasks, return_exceptions=True)

    # -- the core: change a VM's state, then act ----------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def transition(self, key: str, fn: Callable[[VmState], list[engine.Action]]) -> None:
        async with self._lock(key):
            _, actions = await self.vms.change(key, fn)
        if actions:
            await self._perform(key, actions)

    async def _perform(self, key: str, actions: list[engine.Action]) -> None:
        emits: list[Message] = []
        finished = False
        for action in actions:
            if isinstance(action, engine.Emit):
                emits.append(action.event)
                continue
            if isinstance(action, engine.Run) and not self._controller_owns(key, action.step):
                # a service's step only builds its command: send it with the events before it
                await self._run_step(key, action.step, action.attempt, emits)
                continue
            if emits:
                await self.bus.publish_many(emits)
                emits = []
            if isinstance(action, engine.Run):
                await self._run_step(key, action.step, action.attempt)
            elif isinstance(action, engine.WakeAt):
                self._wake(key, action.at)
            elif isinstance(action, engine.RestorePower):
                await self._restore_power(key)
            elif isinstance(action, engine.Cleanup):
                await self._cleanup(key)
            elif isinstance(action, engine.MarkCanceled):
                state = self._state(key)
                await cancellation.request(
                    self.bus, state.migration, state.vm, state.cancel_reason or "canceled"
                )
            elif isinstance(action, engine.Finished):
                finished = True
        if emits:
            await self.bus.publish_many(emits)
        if finished:
            await self.transition(key, _mark_finalized)
            self._finished(key)
            await self._maybe_complete(self._state(key).migration)

    def _state(self, key: str) -> VmState:
        state = self.vms.get(key)
        if state is None:
            raise KeyError(key)
        return state

    def _provider(self, ref: SourceRef) -> providers_base.Provider:
        got = self._providers.get(ref.provider)
        if got is None:
            got = self._make_provider(ref)
            self._providers[ref.provider] = got
        return got

    def _controller_owns(self, key: str, name: str) -> bool:
        return itinerary.step_of(self._state(key).flow, name).owner is Service.CONTROLLER

    async def _run_step(
        self, key: str, name: str, attempt: int, batch: list[Message] | None = None
    ) -> None:
        state = self._state(key)
        step = itinerary.step_of(state.flow, name)
        ctx = steps.StepContext(
            state=state,
            attempt=attempt,
            source=_LazySource(lambda: self._provider(state.provider)),
            hooks=self.hooks,
            now=self.clock(),
            shutdown_timeout=self.settings.controller.shutdown_timeout_seconds,
            label=engine.label(this) if (this := state.step(name)) else name,
        )
        task = asyncio.create_task(step.run(ctx))
        if step.owner is Service.CONTROLLER:
            self._local[key] = task
        try:
            outcome = await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current and current.cancelling()):
                return  # the VM was canceled while the controller ran its step
            raise
        except Exception as err:
            permanent = isinstance(err, PERMANENT_LOCAL)
            reason = str(getattr(err, "reason", "") or err) or type(err).__name__
            now = self.clock()
            await self.transition(
                key, lambda s: engine.step_failed(s, name, attempt, reason, permanent, now)
            )
            return
        finally:
            if self._local.get(key) is task:
                del self._local[key]
        now = self.clock()
        if isinstance(outcome, steps.Dispatch) and batch is not None:
            batch.append(outcome.command)
        elif isinstance(outcome, steps.Dispatch):
            await self.bus.publish(outcome.command)
        elif isinstance(outcome, steps.Done):
            if outcome.events:
                await self.bus.publish_many(outcome.events)
            patch = outcome.patch

            def done(s: VmState) -> list[engine.Action]:
                if patch is not None and s.current is not None and s.current.name == name:
                    patch(s)
                return engine.step_done(s, name, now)

            await self.transition(key, done)
        elif isinstance(outcome, steps.Wait):
            until = outcome.until
            await self.transition(key, lambda s: engine.step_wait(s, name, until))
        else:
            phase = outcome.phase.value
            await self.transition(key, lambda s: engine.step_repeat(s, name, phase, now))

    async def _restore_power(self, key: str) -> None:
        state = self._state(key)
        try:
            if state.source_power == PowerState.ON.value:
                await self._provider(state.provider).power_on(state.inventory)
        except Exception as err:
            log.error("could not restore the source power of %s: %s", state.name, err)
            now, why = now_iso(self.clock()), str(err)

            def record(s: VmState) -> list[engine.Action]:
                s.errors.append(VmError(step="RestorePower", attempt=1, reason=why, time=now))
                return []

            await self.transition(key, record)
            return

        def restored(s: VmState) -> list[engine.Action]:
            s.power_restored = True
            return [engine.Emit(migration.SourcePowerRestored(**_ids(s), state=s.source_power))]

        await self.transition(key, restored)

    async def _cleanup(self, key: str) -> None:
        s = self._state(key)
        await self.bus.publish(
            volume.CleanupVolumes(
                **_ids(s), step="Cleanup", namespace=s.namespace, all_volumes=True
            )
        )

    # -- scheduling --------------------------------------------------------------

    def _index(self, state: VmState) -> None:
        key = self.vms.key(state.migration, state.vm)
        keys = self._by_migration.setdefault(state.migration, [])
        if key not in keys:
            keys.append(key)
        if state.status is VmStatus.QUEUED:
            queue = self._queues.setdefault(state.plan, [])
            if key not in queue:
                queue.append(key)
        elif state.status is VmStatus.RUNNING and key not in self._active:
            self._take_slot(key, state)

    def _take_slot(self, key: str, state: VmState) -> None:
        self._active.add(key)
        self._per_plan[state.plan] += 1
        if state.host:
            self._per_host[(state.plan, state.host)] += 1

    def _finished(self, key: str) -> None:
        state = self._state(key)
        if key in self._active:
            self._active.discard(key)
            self._per_plan[state.plan] -= 1
            if state.host:
                self._per_host[(state.plan, state.host)] -= 1
        queue = self._queues.get(state.plan)
        if queue and key in queue:
            queue.remove(key)
        self._kick.set()

    def _ready(self) -> list[str]:
        """Queued VMs that may start now, in queue order, within both caps."""
        ready: list[str] = []
        for plan, queue in self._queues.items():
            limits = self._limits.get(plan, PlanLimits())
            for key in list(queue):
                if self._per_plan[plan] >= limits.max_in_flight:
                    break
                state = self._state(key)
                if state.host and self._per_host[(plan, state.host)] >= limits.per_host:
                    continue
                queue.remove(key)
                self._take_slot(key, state)
                ready.append(key)
        return ready

    async def _schedule_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            for key in self._ready():
                self._spawn(self.transition(key, self._starter()))

    def _starter(self) -> Callable[[VmState], list[engine.Action]]:
        now = self.clock()
        return lambda s: engine.start(s, now)

    def _ticker(self) -> Callable[[VmState], list[engine.Action]]:
        now = self.clock()
        return lambda s: engine.tick(s, now)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("controller task failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake(self, key: str, at: float) -> None:
        heapq.heappush(self._timers, (at, key))
        self._timer_kick.set()

    async def _timer_loop(self) -> None:
        while True:
            delay = self._timers[0][0] - self.clock() if self._timers else 3600.0
            if delay > 0:
                self._timer_kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._timer_kick.wait(), timeout=delay)
                continue
            _, key = heapq.heappop(self._timers)
            self._spawn(self.transition(key, self._ticker()))

    # -- start-up ------------------------------------------------------------------

    async def resume(self) -> None:
        """Pick every stored VM up where it was; nothing finished runs again."""
        states = await self.vms.load_all()
        for plan in {s.plan for s in states}:
            await self._load_limits(plan)
        for state in sorted(states, key=lambda s: (s.migration, s.seq)):
            self._index(state)
        for state in states:
            key = self.vms.key(state.migration, state.vm)
            if state.status.ended:
                if not state.finalized:
                    self._spawn(self._perform(key, engine.finish_actions(state)))
                continue
            cur = state.current
            if state.status is not VmStatus.RUNNING or cur is None:
                continue
            if cur.status is StepStatus.RUNNING and cur.wait_until:
                self._wake(
                    key, min(cur.wait_until, state.cutover) if state.cutover else cur.wait_until
                )
            elif cur.status is StepStatus.RUNNING:
                self._spawn(self._run_step(key, cur.name, cur.attempt))
            else:
                self._wake(key, cur.retry_at)
        for name in {s.migration for s in states}:
            self._spawn(self._finish_start(name))
        self._kick.set()
        log.info("resumed %d VMs", len(states))

    async def _finish_start(self, name: str) -> None:
        """Complete a start that a kill cut short, then see whether the migration ended.

        VMs stored but the Migration never marked Running: the controller died inside
        ``start_migration``. Its command is not always delivered again (JetStream
        stops after ``max_deliver`` deliveries, and deliveries to a killed process
        count), and without the Running phase the migration would never complete.
        Starting again is idempotent: stored VMs are kept as they are.
        """
        mig = await self.objects.find(objects.Migration, name)
        if mig is not None and not mig.status.phase:
            log.info("completing the interrupted start of migration %s", name)
            await self.start_migration(name)
            return
        await self._maybe_complete(name)

    async def _load_limits(self, plan_name: str) -> None:
        plan = await self.objects.find(objects.Plan, plan_name)
        if plan is not None:
            self._limits[plan_name] = PlanLimits(
                plan.spec.maxInFlight, plan.spec.maxInFlightPerHost
            )

    # -- commands --------------------------------------------------------------------

    async def _on_start(self, cmd: migration.StartMigration, ctx: Context) -> None:
        await self.start_migration(cmd.migration, cmd.cutover)

    async def start_migration(self, name: str, cutover: str | None = None) -> None:
        mig = await self.objects.find(objects.Migration, name)
        if mig is None:
            await self._reject(
                "", name, {planning.PLAN_KEY: [f"Migration {name!r} does not exist"]}
            )
            return
        if mig.status.phase:
            return  # already accepted or rejected (a redelivered start)
        plan_name = mig.spec.plan.name
        try:
            plan = await self.objects.get(objects.Plan, plan_name, f"Migration {name}")
            by = f"Plan {plan_name}"
            source = await self.objects.get(objects.Provider, plan.spec.provider.source.name, by)
            target = await self.objects.get(
                objects.Provider, plan.spec.provider.destination.name, by
            )
            networks = await self.objects.get(objects.NetworkMap, plan.spec.map.network.name, by)
            storage = await self.objects.get(objects.StorageMap, plan.spec.map.storage.name, by)
        except MissingObject as err:
            await self._reject(plan_name, name, {planning.PLAN_KEY: [str(err)]})
            return
        if cutover:
            mig.spec.cutover = datetime.fromisoformat(cutover.replace("Z", "+00:00"))
        inventory, unreachable = await self._inventory(source)
        done = {  # migrated by an earlier migration; this one's own VMs (a start cut short) stay
            s.vm
            for s in self._all_states()
            if s.plan == plan.name and s.status is VmStatus.SUCCEEDED and s.migration != name
        }
        check = planning.preflight(
            plan, source, inventory, networks, storage, unreachable, frozenset(done)
        )
        if not check.ok:
            await self._reject(plan.name, name, check.reasons)
            return
        self._limits[plan.name] = PlanLimits(plan.spec.maxInFlight, plan.spec.maxInFlightPerHost)
        now = self.clock()
        limits = planning.Limits(
            max_attempts=self.settings.controller.max_attempts,
            retry_base=self.settings.controller.retry_base_seconds,
        )
        fresh = [
            planning.vm_state(
                plan=plan, migration=mig, source=source, destination=target, networks=networks,
                storage=storage, wanted=wanted, vm=found, target_name=check.target_names[found.id],
                seq=seq, now=now, limits=limits,
            )
            for seq, (wanted, found) in enumerate(check.vms)
        ]  # fmt: skip
        for chunk in range(0, len(fresh), 64):  # stored in parallel, indexed in plan order
            stored = await asyncio.gather(*(self.vms.create(s) for s in fresh[chunk : chunk + 64]))
            for state in stored:
                self._index(state)
        started = [s.name for s in fresh]
        skipped = sorted(
            s.name
            for s in self._all_states()
            if s.plan == plan.name and s.vm in done and s.migration != name
        )

        def running(status: dict[str, Any]) -> None:
            status.update(phase="Running", started=now_iso(now), reasons={})

        await self.objects.set_status(objects.Migration, name, running)
        await self.bus.publish(
            migration.MigrationStarted(
                plan=plan.name, migration=name, vm=ALL, vms=started, skipped=sorted(set(skipped))
            )
        )
        self._kick.set()
        await self._maybe_complete(name)

    async def _inventory(self, source: objects.Provider) -> tuple[list[InventoryVm] | None, str]:
        ref = SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url)
        try:
            provider = self._provider(ref)
            await provider.check()
            return await provider.inventory(), ""
        except Exception as err:
            self._providers.pop(source.name, None)
            return None, str(err) or type(err).__name__

    async def _reject(self, plan: str, name: str, reasons: dict[str, list[str]]) -> None:
        log.warning("migration %s rejected: %s", name, reasons)
        if await self.objects.find(objects.Migration, name) is not None:

            def rejected(status: dict[str, Any]) -> None:
                status.update(phase="Rejected", reasons=reasons, completed=now_iso(self.clock()))

            await self.objects.set_status(objects.Migration, name, rejected)
        await self.bus.publish(
            migration.MigrationRejected(plan=plan, migration=name, vm=ALL, reasons=reasons)
        )

    def _all_states(self) -> list[VmState]:
        return [s for s, _ in self.vms.cache.values()]

    async def _on_cancel(self, cmd: migration.CancelMigration, ctx: Context) -> None:
        await self.cancel(cmd.migration, cmd.vm, cmd.reason)

    async def cancel(self, name: str, vm_ref: str, reason: str) -> None:
        keys = self._by_migration.get(name, [])
        if vm_ref == ALL:
            await cancellation.request(self.bus, name, None, reason)
            wanted = list(keys)
        else:
            wanted = [k for k in keys if vm_ref in (self._state(k).vm, self._state(k).name)]
            if not wanted:
                log.warning("cancel of %s/%s: no such VM in the migration", name, vm_ref)
        now = self.clock()
        for key in wanted:
            local = self._local.pop(key, None)
            if local is not None:  # stop a power-off or hook in progress before restoring power
                local.cancel()
                await asyncio.gather(local, return_exceptions=True)
            await self.transition(key, lambda s: engine.cancel(s, reason, now))

    async def _on_cutover(self, cmd: migration.Cutover, ctx: Context) -> None:
        at = datetime.fromisoformat(cmd.cutover.replace("Z", "+00:00")).timestamp()
        for key in self._by_migration.get(cmd.migration, []):
            await self.transition(key, lambda s: engine.set_cutover(s, at))

    # -- events ------------------------------------------------------------------------

    async def _known(self, evt: Message) -> str | None:
        key = self.vms.key(evt.migration, evt.vm)
        if self.vms.get(key) is None:
            entry = await self.vms.kv.get(key)
            if entry is None:
                return None
            self.vms.cache[key] = (entry.value, entry.revision)
            self._index(entry.value)
        return key

    async def _on_completed(self, evt: Event, ctx: Context) -> None:
        key = await self._known(evt)
        if key is None:
            return
        now = self.clock()

        def completed(s: VmState) -> list[engine.Action]:
            cur = s.current
            if cur is None or cur.status is not StepStatus.RUNNING:
                return []
            step = itinerary.step_of(s.flow, cur.name)
            said = getattr(evt, "step", "")
            if type(evt) not in step.done_on or (said and said != engine.label(cur)):
                return []
            if step.absorb is not None:
                step.absorb(s, evt)
            return engine.step_done(s, cur.name, now)

        await self.transition(key, completed)

    async def _on_failed(self, evt: Failed, ctx: Context) -> None:
        key = await self._known(evt)
        if key is None or evt.canceled or evt.step == "Cleanup":
            return
        # Out of deliveries may work on another attempt; the deliveries rule still
        # covers producers older than ``outcome`` (which defaults to permanent).
        transient = (
            evt.outcome is FailureOutcome.GAVE_UP or evt.deliveries >= self.settings.bus.max_deliver
        )
        reason = evt.reason
        now = self.clock()

        def failed(s: VmState) -> list[engine.Action]:
            cur = s.current
            if cur is None or (evt.step and evt.step != engine.label(cur)):
                return []  # a failure of a step (or precopy round) that is no longer running
            return engine.step_failed(s, cur.name, evt.attempt, reason, not transient, now)

        await self.transition(key, failed)

    def _throttled(self, key: str, done: int, total: int) -> bool:
        now = time.monotonic()
        if (
            done < total
            and now - self._last_progress.get(key, 0.0)
            < self.settings.controller.progress_min_interval_seconds
        ):
            return True
        self._last_progress[key] = now
        return False

    async def _on_disk_progress(self, evt: volume.DiskProgress, ctx: Context) -> None:
        key = await self._known(evt)
        if key is None or self._throttled(key, evt.done, evt.total):
            return
        await self.transition(
            key, lambda s: engine.progress(s, evt.step, evt.disk_id, evt.done, evt.total)
        )

    async def _on_conversion_progress(
        self, evt: conversion.ConversionProgress, ctx: Context
    ) -> None:
        key = await self._known(evt)
        if key is None or evt.disk is None or evt.percent is None:
            return
        state = self._state(key)
        if state.flow is not Flow.CONVERSION or not 0 < evt.disk <= len(state.inventory.disks):
            return  # only a full conversion copies disks; in place, the bytes are already there
        disk = state.inventory.disks[evt.disk - 1]
        done = int(disk.capacity * min(100.0, max(0.0, evt.percent)) / 100)
        if self._throttled(key, done, disk.capacity):
            return
        await self.transition(
            key, lambda s: engine.progress(s, evt.step, disk.id, done, disk.capacity)
        )

    # -- migrations ------------------------------------------------------------------------

    async def _maybe_complete(self, name: str) -> None:
        if name in self._completed:
            return
        states = [self._state(k) for k in self._by_migration.get(name, [])]
        if any(not s.status.ended or not s.finalized for s in states):
            return
        mig = await self.objects.find(objects.Migration, name)
        if mig is None or mig.status.phase not in ("Running", "Succeeded", "Failed", "Canceled"):
            return
        self._completed.add(name)
        count = Counter(s.status for s in states)
        ok, bad, off = count[VmStatus.SUCCEEDED], count[VmStatus.FAILED], count[VmStatus.CANCELED]
        phase = "Failed" if bad else "Canceled" if off else "Succeeded"
        when = now_iso(self.clock())

        def ended(status: dict[str, Any]) -> None:
            status.update(phase=phase, completed=status.get("completed") or when)

        await self.objects.set_status(objects.Migration, name, ended)
        await self.bus.publish(
            migration.MigrationCompleted(
                plan=mig.spec.plan.name,
                migration=name,
                vm=ALL,
                succeeded=ok,
                failed=bad,
                canceled=off,
            )
        )

    async def _hook_command(self, name: str) -> tuple[list[str], int]:
        hook = await self.objects.get(objects.Hook, name)
        return list(hook.spec.command), hook.spec.deadline


def _ids(s: VmState) -> dict[str, Any]:
    return {"plan": s.plan, "migration": s.migration, "vm": s.vm}


def _mark_finalized(s: VmState) -> list[engine.Action]:
    s.finalized = True
    return []


def build_router(
    bus: Bus,
    settings: ControllerSettings,
    *,
    providers: ProviderFactory = default_providers,
    hooks: steps.Hooks | None = None,
) -> Controller:
    """The controller as the runtime runs it: ``await build_router(bus, s).run(bus, …)``.

    It is not a single :class:`ferry.bus.Router` (it has two intakes, a scheduler
    and a timer) but runs with the same ``run(bus, concurrency, stop, grace_seconds,
    observer)`` signature.
    """
    return Controller(bus, settings, providers=providers, hooks=hooks)


Settings = ControllerSettings
