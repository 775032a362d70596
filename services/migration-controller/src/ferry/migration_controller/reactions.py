"""What the controller does with what it is told: the services' events, cancel, cutover.

Each reaction becomes one transition of one VM (or of each VM of a migration).
Events are facts and arrive more than once or late; the engine ignores one that
does not fit the VM's state (a step that is not running, a round or attempt
that is over), so a reaction never has to ask whether it saw the event before.

Progress arrives often: per disk of a VM it is stored and re-published at most
every ``progress_min_interval_seconds``, and always when it reaches 100 % (the
shared :class:`ferry.runtime.progress.Throttle`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from ferry.bus import Bus, Context, Router, cancellation
from ferry.migration_controller import engine, itinerary
from ferry.migration_controller.driver import Driver
from ferry.migration_controller.scheduler import Scheduler
from ferry.migration_controller.settings import ControllerSettings
from ferry.migration_controller.store import ALL, VmStates
from ferry.proto import conversion, migration, vm, volume
from ferry.proto.base import Event, Failed, FailureOutcome, Message, StepEvent
from ferry.proto.phases import Flow, StepStatus
from ferry.proto.state import VmState
from ferry.runtime.progress import Throttle

log = logging.getLogger(__name__)

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


class Reactions:
    def __init__(
        self,
        bus: Bus,
        settings: ControllerSettings,
        vms: VmStates,
        *,
        scheduler: Scheduler,
        driver: Driver,
        clock: Callable[[], float],
    ) -> None:
        self._bus = bus
        self._settings = settings
        self._vms = vms
        self._scheduler = scheduler
        self._driver = driver
        self._clock = clock
        self._progress = Throttle(settings.controller.progress_min_interval_seconds)

    def register_commands(self, router: Router) -> None:
        """Cancel and cutover on the command router; a cancel must never be canceled."""
        router.handler(migration.CancelMigration, cancelable=False)(self.on_cancel)
        router.handler(migration.Cutover, cancelable=False)(self.on_cutover)

    def register_events(self, router: Router) -> None:
        """The services' results and progress on the event router."""
        for done in COMPLETIONS:
            router.handler(done, cancelable=False)(self.on_completed)
        for failed in FAILURES:
            router.handler(failed, cancelable=False)(self.on_failed)
        router.handler(volume.DiskProgress, cancelable=False)(self.on_disk_progress)
        router.handler(conversion.ConversionProgress, cancelable=False)(self.on_conversion_progress)

    # -- commands ----------------------------------------------------------------------

    async def on_cancel(self, cmd: migration.CancelMigration, ctx: Context) -> None:
        await self.cancel(cmd.migration, cmd.vm, cmd.reason)

    async def cancel(self, name: str, vm_ref: str, reason: str) -> None:
        keys = self._scheduler.keys_of(name)
        state = self._driver.state
        if vm_ref == ALL:
            await cancellation.request(self._bus, name, None, reason)
            wanted = list(keys)
        else:
            wanted = [k for k in keys if vm_ref in (state(k).vm, state(k).name)]
            if not wanted:
                log.warning("cancel of %s/%s: no such VM in the migration", name, vm_ref)
        now = self._clock()
        for key in wanted:
            # stop a power-off or hook in progress before restoring power
            await self._driver.stop_local(key)
            await self._driver.transition(key, lambda s: engine.cancel(s, reason, now))

    async def on_cutover(self, cmd: migration.Cutover, ctx: Context) -> None:
        at = datetime.fromisoformat(cmd.cutover.replace("Z", "+00:00")).timestamp()
        for key in self._scheduler.keys_of(cmd.migration):
            await self._driver.transition(key, lambda s: engine.set_cutover(s, at))

    # -- events ------------------------------------------------------------------------

    async def _known(self, evt: Message) -> str | None:
        """The VM's key, read from the bucket if this process has not seen the VM yet."""
        key = self._vms.key(evt.migration, evt.vm)
        if self._vms.get(key) is None:
            entry = await self._vms.kv.get(key)
            if entry is None:
                return None
            self._vms.cache[key] = (entry.value, entry.revision)
            self._scheduler.index(entry.value)
        return key

    async def on_completed(self, evt: Event, ctx: Context) -> None:
        key = await self._known(evt)
        if key is None:
            return
        now = self._clock()

        def completed(s: VmState) -> list[engine.Action]:
            cur = s.current
            if cur is None or cur.status is not StepStatus.RUNNING:
                return []
            step = itinerary.step_of(s.flow, cur.name)
            said = evt.step if isinstance(evt, StepEvent) else ""
            if type(evt) not in step.done_on or (said and said != engine.label(cur)):
                return []
            if step.absorb is not None:
                step.absorb(s, evt)
            return engine.step_done(s, cur.name, now)

        # A redelivery that finds its step done may be one whose first run stored the
        # change but failed to send the next command: the driver sends it again.
        await self._driver.transition(key, completed, resend=ctx.deliveries > 1)

    async def on_failed(self, evt: Failed, ctx: Context) -> None:
        key = await self._known(evt)
        if key is None or evt.canceled or evt.step == "Cleanup":
            return
        # Out of deliveries may work on another attempt; the deliveries rule still
        # covers producers older than ``outcome`` (which defaults to permanent).
        transient = (
            evt.outcome is FailureOutcome.GAVE_UP
            or evt.deliveries >= self._settings.bus.max_deliver
        )
        reason = evt.reason
        now = self._clock()

        def failed(s: VmState) -> list[engine.Action]:
            cur = s.current
            if cur is None or (evt.step and evt.step != engine.label(cur)):
                return []  # a failure of a step (or precopy round) that is no longer running
            return engine.step_failed(s, cur.name, evt.attempt, reason, not transient, now)

        await self._driver.transition(key, failed, resend=ctx.deliveries > 1)

    def _throttled(self, key: str, step: str, disk: str, done: int, total: int) -> bool:
        # Keyed per disk so that one disk's 100 % is never hidden by another's; the step
        # is the stage, so a new round or step reporting the same numbers is still news.
        return not self._progress.admit((key, disk), done, total, step)

    async def on_disk_progress(self, evt: volume.DiskProgress, ctx: Context) -> None:
        key = await self._known(evt)
        if key is None or self._throttled(key, evt.step, evt.disk_id, evt.done, evt.total):
            return
        await self._driver.transition(
            key, lambda s: engine.progress(s, evt.step, evt.disk_id, evt.done, evt.total)
        )

    async def on_conversion_progress(
        self, evt: conversion.ConversionProgress, ctx: Context
    ) -> None:
        key = await self._known(evt)
        if key is None or evt.disk is None or evt.percent is None:
            return
        state = self._driver.state(key)
        if state.flow is not Flow.CONVERSION or not 0 < evt.disk <= len(state.inventory.disks):
            return  # only a full conversion copies disks; in place, the bytes are already there
        disk = state.inventory.disks[evt.disk - 1]
        done = int(disk.capacity * min(100.0, max(0.0, evt.percent)) / 100)
        if self._throttled(key, evt.step, disk.id, done, disk.capacity):
            return
        await self._driver.transition(
            key, lambda s: engine.progress(s, evt.step, disk.id, done, disk.capacity)
        )
