"""The end of a VM and of a migration.

When a VM fails or is canceled, what it changed is put back: the source's
power as it was (when the migration had started powering it off), and the
volumes the services created removed. These side effects run after the VM's
end is stored and are marked done (``finalized``) only once they ran, so a
controller killed in between does them again on start-up (``engine.finish_actions``).

A migration completes when every one of its VMs ended and was finalized: its
phase is set from the VMs' outcomes and ``MigrationCompleted`` is published,
once per process (the bus drops a second one: its id is the same).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from ferry.bus import Bus
from ferry.migration_controller import engine
from ferry.migration_controller.scheduler import Scheduler
from ferry.migration_controller.sources import Sources
from ferry.migration_controller.store import ALL, Objects
from ferry.proto import migration, objects, vm, volume
from ferry.proto.base import Message
from ferry.proto.inventory import PowerState
from ferry.proto.phases import MigrationPhase, VmStatus
from ferry.proto.state import VmError, VmState, now_iso
from ferry.providers.base import TransferSource, WarmSource

log = logging.getLogger(__name__)

Change = Callable[[VmState], list[engine.Action]]

CLEANUP = "Cleanup"
"""The step of clean-up commands; the controller ignores their failures (nothing to retry)."""


def mark_finalized(s: VmState) -> list[engine.Action]:
    s.finalized = True
    return []


class Completion:
    def __init__(
        self,
        bus: Bus,
        objects_: Objects,
        scheduler: Scheduler,
        states: Callable[[str], VmState],
        sources: Sources,
        clock: Callable[[], float],
        forget: Callable[[str], None] = lambda name: None,
    ) -> None:
        self._bus = bus
        self._forget = forget
        self._objects = objects_
        self._scheduler = scheduler
        self._states = states
        self._sources = sources
        self._clock = clock
        self._completed: set[str] = set()

    async def restore_power(self, state: VmState) -> Change:
        """Power the source on again if it ran; the change that records how it went."""
        try:
            if state.source_power == PowerState.ON.value:
                provider = await self._sources.get(state.provider)
                if isinstance(provider, TransferSource):  # its disks stay locked until then
                    await provider.release_transfers(state.inventory)
                await provider.power_on(state.inventory)
        except Exception as err:
            log.error("could not restore the source power of %s: %s", state.name, err)
            now, why = now_iso(self._clock()), str(err)

            def record(s: VmState) -> list[engine.Action]:
                s.errors.append(VmError(step="RestorePower", attempt=1, reason=why, time=now))
                return []

            return record

        def restored(s: VmState) -> list[engine.Action]:
            s.power_restored = True
            event = migration.SourcePowerRestored(**engine.ids(s), state=s.source_power)
            return [engine.Emit(event)]

        return restored

    async def cleanup(self, s: VmState, *, vm_too: bool) -> None:
        """Ask the services to remove the VM's VirtualMachine (if it may exist) and volumes.

        The VirtualMachine goes first: it is what holds the volumes. Both commands
        look before they delete, so repeating them after a restart is harmless.
        """
        if s.warm:
            await self.forget_checkpoints(s)
        await self.release_transfers(s)
        ids = engine.ids(s)
        commands: list[Message] = []
        if vm_too:
            commands.append(
                vm.DeleteVm(**ids, step=CLEANUP, namespace=s.namespace, target_name=s.target_name)
            )
        commands.append(
            volume.CleanupVolumes(**ids, step=CLEANUP, namespace=s.namespace, all_volumes=True)
        )
        await self._bus.publish_many(commands)

    async def forget_checkpoints(self, s: VmState) -> None:
        """A failed or canceled warm VM leaves no change tracking behind at the source.

        Only the source knows which checkpoints Ferry made (a killed round may have
        made one nobody recorded), so it is asked, not the state. A failure is
        logged: the VM's own failure is what must be reported.
        """
        try:
            provider = await self._sources.get(s.provider)
            if not isinstance(provider, WarmSource):
                return
            for checkpoint in await provider.checkpoints(s.inventory):
                await provider.remove_checkpoint(s.inventory, checkpoint)
        except Exception as err:
            log.error("could not remove the source checkpoints of %s: %s", s.name, err)

    async def release_transfers(self, s: VmState) -> None:
        """A failed or canceled VM leaves no transfer open at the source (oVirt image
        transfers: a killed copy's is found at the source, not in the state)."""
        try:
            provider = await self._sources.get(s.provider)
            if isinstance(provider, TransferSource):
                released = await provider.release_transfers(s.inventory)
                if released:
                    log.info("ended %d source transfer(s) of %s", released, s.name)
        except Exception as err:
            log.error("could not end the source transfers of %s: %s", s.name, err)

    def forget(self, name: str) -> None:
        """The migration's VMs are gone from the bus (retention): stop remembering it."""
        self._completed.discard(name)

    async def maybe_complete(self, name: str) -> None:
        """Complete the migration if all its VMs ended and their ends were carried out."""
        if name in self._completed:
            return
        states = [self._states(k) for k in self._scheduler.keys_of(name)]
        if any(not s.status.ended or not s.finalized for s in states):
            return
        mig = await self._objects.find(objects.Migration, name)
        # Ended already (a redelivered event, or one of a migration the retention
        # removed): completing again would report its VMs a second time.
        if mig is None or mig.status.phase is not MigrationPhase.RUNNING:
            return
        self._completed.add(name)
        count = Counter(s.status for s in states)
        ok, bad, off = count[VmStatus.SUCCEEDED], count[VmStatus.FAILED], count[VmStatus.CANCELED]
        phase = MigrationPhase.SUCCEEDED
        if bad:
            phase = MigrationPhase.FAILED
        elif off:
            phase = MigrationPhase.CANCELED
        when = now_iso(self._clock())

        def ended(status: dict[str, Any]) -> None:
            status.update(phase=phase, completed=status.get("completed") or when)

        await self._objects.set_status(objects.Migration, name, ended)
        await self._bus.publish(
            migration.MigrationCompleted(
                plan=mig.spec.plan.name,
                migration=name,
                vm=ALL,
                succeeded=ok,
                failed=bad,
                canceled=off,
            )
        )
        self._forget(name)
