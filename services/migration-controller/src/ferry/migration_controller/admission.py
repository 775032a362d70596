"""Admission: turn a ``migration.start`` into queued VMs, or reject it with reasons.

Before anything runs, the whole migration is checked (``planning.preflight``):
the objects it names exist, the source answers, every VM is found and mapped.
One bad VM rejects the migration, and nothing is touched: a half-started
migration is worse than one that says, per VM, what to fix. When it passes,
each VM's state (its itinerary included) is stored, queued for the scheduler,
and the Migration is marked Running with its estimate (``status.estimate``, from
the inventory just read and what earlier VMs measured), whichever way it was
started.

Starting is idempotent: a redelivered start finds the Migration's phase set and
does nothing, and VMs stored by a start that a kill cut short are kept as they are.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ferry.bus import Bus, Context, Router
from ferry.migration_controller import drivers, planning
from ferry.migration_controller.completion import Completion
from ferry.migration_controller.scheduler import Scheduler
from ferry.migration_controller.settings import ControllerSettings
from ferry.migration_controller.sources import Sources
from ferry.migration_controller.store import ALL, MissingObject, Objects, VmStates
from ferry.proto import migration, objects
from ferry.proto.inventory import Vm as InventoryVm
from ferry.proto.phases import MigrationPhase, VmStatus
from ferry.proto.state import now_iso
from ferry.proto.volume import SourceRef
from ferry.providers import base as providers_base
from ferry.providers.base import Configurable
from ferry.runtime import estimates, probe

log = logging.getLogger(__name__)

INSPECTIONS = 2  # raw-copy guest inspections at once (each a libguestfs appliance)
STORE_BATCH = 64  # VM states stored at once: parallel writes, indexed in plan order


class Admission:
    def __init__(
        self,
        bus: Bus,
        settings: ControllerSettings,
        objects_: Objects,
        vms: VmStates,
        *,
        scheduler: Scheduler,
        completion: Completion,
        sources: Sources,
        clock: Callable[[], float],
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._objects = objects_
        self._vms = vms
        self._scheduler = scheduler
        self._completion = completion
        self._sources = sources
        self._clock = clock

    def register(self, router: Router) -> None:
        """``migration.start`` on the command router (never canceled: it starts the work)."""
        router.handler(migration.StartMigration, cancelable=False)(self.on_start)

    async def on_start(self, cmd: migration.StartMigration, ctx: Context) -> None:
        await self.start_migration(cmd.migration, cmd.cutover)

    async def start_migration(self, name: str, cutover: str | None = None) -> None:
        mig = await self._objects.find(objects.Migration, name)
        if mig is None:
            await self._reject(
                "", name, {planning.PLAN_KEY: [f"Migration {name!r} does not exist"]}
            )
            return
        if mig.status.phase:
            return  # already accepted or rejected (a redelivered start)
        plan_name = mig.spec.plan.name
        try:
            plan = await self._objects.get(objects.Plan, plan_name, f"Migration {name}")
            by = f"Plan {plan_name}"
            source = await self._objects.get(objects.Provider, plan.spec.provider.source.name, by)
            target = await self._objects.get(
                objects.Provider, plan.spec.provider.destination.name, by
            )
            networks = await self._objects.get(objects.NetworkMap, plan.spec.map.network.name, by)
            storage = await self._objects.get(objects.StorageMap, plan.spec.map.storage.name, by)
        except MissingObject as err:
            await self._reject(plan_name, name, {planning.PLAN_KEY: [str(err)]})
            return
        if cutover:
            mig.spec.cutover = datetime.fromisoformat(cutover.replace("Z", "+00:00"))
        inventory, unreachable = await self._inventory(source)
        earlier = self._earlier_successes(plan.name, name)
        done = set(earlier)
        configured = await self._configured(source, plan, inventory)
        told = await self._source_reasons(source, plan, inventory or [], frozenset(done))
        check = planning.preflight(
            plan,
            source,
            inventory,
            networks,
            storage,
            unreachable,
            frozenset(done),
            configured=configured,
            source_reasons=told,
            busy=self._in_flight(source.name, name),
        )
        if not check.ok:
            await self._reject(plan.name, name, check.reasons)
            return
        warnings = await self._raw_copy_warnings(plan, source, check.vms)
        self._scheduler.set_limits(plan)
        await self._scheduler.load_budgets()
        now = self._clock()
        limits = planning.Limits(
            max_attempts=self._settings.controller.max_attempts,
            retry_base=self._settings.controller.retry_base_seconds,
        )
        fresh = [
            planning.vm_state(
                plan=plan, migration=mig, source=source, destination=target, networks=networks,
                storage=storage, wanted=wanted, vm=found, target_name=check.target_names[found.id],
                seq=seq, now=now, limits=limits,
            )
            for seq, (wanted, found) in enumerate(check.vms)
        ]  # fmt: skip
        for chunk in range(0, len(fresh), STORE_BATCH):
            batch = fresh[chunk : chunk + STORE_BATCH]
            stored = await asyncio.gather(*(self._vms.create(s) for s in batch))
            for state in stored:
                self._scheduler.index(state)
        started = [s.name for s in fresh]
        skipped = sorted(earlier.values())
        estimate = await self._estimate(plan, source, check.vms, now)

        def running(status: dict[str, Any]) -> None:
            status.update(
                phase=MigrationPhase.RUNNING,
                started=now_iso(now),
                reasons={},
                estimate=estimate,
                warnings=warnings,
            )

        await self._objects.set_status(objects.Migration, name, running)
        await self._bus.publish(
            migration.MigrationStarted(
                plan=plan.name,
                migration=name,
                vm=ALL,
                vms=started,
                skipped=sorted(set(skipped)),
                warnings=warnings,
            )
        )
        self._scheduler.kick()
        await self._completion.maybe_complete(name)

    async def _estimate(
        self,
        plan: objects.Plan,
        source: objects.Provider,
        admitted: list[tuple[objects.PlanVm, InventoryVm]],
        now: float,
    ) -> str:
        """The estimate of the VMs this migration runs (not those it skips), recorded here so
        that every way of starting a migration gets one; never a reason not to start. A
        pair with no history gets its throughput from a short read of the source."""
        spec = plan.spec.model_copy(update={"vms": [wanted for wanted, _ in admitted]})
        try:
            states = [s for s, _ in self._vms.cache.values()]
            pair = source.name, plan.spec.targetNamespace
            probed = None
            if not estimates.has_history(estimates.samples_of(states, self._vms.learned), *pair):
                ref = SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url)
                probed = await probe.probed_input(
                    await self._sources.get(ref),
                    [found for _, found in admitted],
                    estimates.no_history_on(*pair),
                    seconds=self._settings.controller.estimate_probe_seconds,
                )
            return estimates.encode(
                estimates.plan_estimate(
                    plan.model_copy(update={"spec": spec}),
                    states,
                    [found for _, found in admitted],
                    now=now,
                    learned=self._vms.learned,
                    probed=probed,
                )
            )
        except Exception:
            log.exception("no estimate recorded for plan %s", plan.name)
            return ""

    async def finish_start(self, name: str) -> None:
        """Complete a start that a kill cut short, then see whether the migration ended.

        VMs stored but the Migration never marked Running: the controller died inside
        ``start_migration``. Its command is not always delivered again (JetStream
        stops after ``max_deliver`` deliveries, and deliveries to a killed process
        count), and without the Running phase the migration would never complete.
        Starting again is idempotent: stored VMs are kept as they are.
        """
        mig = await self._objects.find(objects.Migration, name)
        if mig is not None and not mig.status.phase:
            log.info("completing the interrupted start of migration %s", name)
            await self.start_migration(name)
            return
        await self._completion.maybe_complete(name)

    async def _raw_copy_warnings(
        self,
        plan: objects.Plan,
        source: objects.Provider,
        vms: list[tuple[objects.PlanVm, InventoryVm]],
    ) -> dict[str, list[str]]:
        """Per VM key, why a raw copy may not boot on virtio (see ``drivers``)."""
        accel = self._settings.controller.raw_copy_inspection
        if not plan.spec.skipGuestConversion or accel == "off" or not vms:
            return {}
        ref = SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url)
        provider = await self._sources.get(ref)
        seconds = self._settings.controller.raw_copy_inspection_seconds
        gate = asyncio.Semaphore(INSPECTIONS)

        async def one(vm: InventoryVm) -> str | None:
            async with gate:
                return drivers.warning(await drivers.inspect(provider, vm, accel, seconds))

        found = await asyncio.gather(*(one(vm) for _, vm in vms))
        warnings = {w.key: [text] for (w, _), text in zip(vms, found, strict=True) if text}
        for key, texts in warnings.items():
            log.warning("migration of %s: %s", key, texts[0])
        return warnings

    async def _inventory(self, source: objects.Provider) -> tuple[list[InventoryVm] | None, str]:
        ref = SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url)
        try:
            provider = await self._sources.get(ref)
            await provider.check()
            return await provider.inventory(), ""
        except Exception as err:
            await self._sources.forget(source.name)
            return None, str(err) or type(err).__name__

    async def _configured(
        self, source: objects.Provider, plan: objects.Plan, inventory: list[InventoryVm] | None
    ) -> planning.Configured:
        """The deployment options the plan chose, read from the source (or why not)."""
        wanted = planning.options_to_read(plan, inventory or [])
        if not wanted:
            return {}
        ref = SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url)
        provider = await self._sources.get(ref)
        found: dict[tuple[str, str], InventoryVm | str] = {}
        for vm, option in wanted:
            if not isinstance(provider, Configurable):
                found[(vm.id, option)] = f"{source.spec.type.value} sources have no options"
                continue
            try:
                found[(vm.id, option)] = await provider.configured(vm, option)
            except Exception as err:  # a reason for that VM, never a failed admission
                found[(vm.id, option)] = str(err) or type(err).__name__
        return found

    async def _source_reasons(
        self,
        source: objects.Provider,
        plan: objects.Plan,
        inventory: list[InventoryVm],
        skip: frozenset[str],
    ) -> dict[str, list[str]]:
        """What the source itself says against each VM (its validator), by VM id.

        Only sources that know more than their inventory shows answer
        (:class:`ferry.providers.base.Validator`); a source that cannot be asked is
        itself a reason, so that nothing starts on an unchecked VM.
        """
        ref = SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url)
        try:
            provider = await self._sources.get(ref)
        except Exception:
            return {}  # unreachable: preflight already says so
        if not isinstance(provider, providers_base.Validator):
            return {}
        told: dict[str, list[str]] = {}
        for wanted in plan.spec.vms:
            found = planning.find_vm(wanted, inventory)
            if found is None or found.id in skip or found.id in told:
                continue
            try:
                told[found.id] = await provider.preflight(found, warm=plan.spec.warm)
            except Exception as err:
                why = f"provider {source.name!r} could not check VM {found.name}: {err}"
                told[found.id] = [why]
        return told

    async def _reject(self, plan: str, name: str, reasons: dict[str, list[str]]) -> None:
        log.warning("migration %s rejected: %s", name, reasons)
        if await self._objects.find(objects.Migration, name) is not None:
            when = now_iso(self._clock())

            def rejected(status: dict[str, Any]) -> None:
                status.update(phase=MigrationPhase.REJECTED, reasons=reasons, completed=when)

            await self._objects.set_status(objects.Migration, name, rejected)
        await self._bus.publish(
            migration.MigrationRejected(plan=plan, migration=name, vm=ALL, reasons=reasons)
        )

    def _in_flight(self, provider: str, migration: str) -> dict[str, str]:
        """VMs of the source (id -> migration) that another migration has not ended yet."""
        return {
            s.vm: s.migration
            for s, _ in self._vms.cache.values()
            if s.provider.provider == provider and s.migration != migration and not s.status.ended
        }

    def _earlier_successes(self, plan: str, migration: str) -> dict[str, str]:
        """VMs of the plan (id -> name) an earlier migration moved; this one's own stay."""
        done = dict(self._vms.succeeded.get(plan, {}))
        for s, _ in self._vms.cache.values():
            if s.plan == plan and s.status is VmStatus.SUCCEEDED and s.migration != migration:
                done[s.vm] = s.name
        return done
