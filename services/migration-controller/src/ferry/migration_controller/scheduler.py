"""Which queued VMs may start now: slots per plan and per source host.

A Plan says how many of its VMs may run at once (``maxInFlight``) and how many
of them on one source host (``maxInFlightPerHost``); VMs start in plan order as
slots free up. The tables here are derived, never stored: on start-up the
controller re-indexes every stored VM (a running VM takes its slot again, a
queued one joins its plan's queue), so they need no persistence of their own.

The scheduler also knows which VMs belong to a migration: cancel, cutover and
completion ask it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ferry.migration_controller.store import Objects, VmStates
from ferry.proto import objects
from ferry.proto.phases import VmStatus
from ferry.proto.state import VmState


@dataclass(frozen=True)
class PlanLimits:
    max_in_flight: int = 20
    per_host: int = 10

    @classmethod
    def of(cls, plan: objects.Plan) -> PlanLimits:
        return cls(plan.spec.maxInFlight, plan.spec.maxInFlightPerHost)


class Scheduler:
    def __init__(self, states: Callable[[str], VmState], objects_: Objects) -> None:
        self._states = states
        self._objects = objects_
        self._queues: dict[str, list[str]] = {}
        self._limits: dict[str, PlanLimits] = {}
        self._active: set[str] = set()
        self._per_plan: Counter[str] = Counter()
        self._per_host: Counter[tuple[str, str]] = Counter()
        self._by_migration: dict[str, list[str]] = {}
        self._kick = asyncio.Event()

    def keys_of(self, migration: str) -> list[str]:
        """The VMs of a migration, in the order they were indexed (plan order)."""
        return self._by_migration.get(migration, [])

    def index(self, state: VmState) -> None:
        """Know a VM: queue it, or count its slot when it runs already."""
        key = VmStates.key(state.migration, state.vm)
        keys = self._by_migration.setdefault(state.migration, [])
        if key not in keys:
            keys.append(key)
        if state.status is VmStatus.QUEUED:
            queue = self._queues.setdefault(state.plan, [])
            if key not in queue:
                queue.append(key)
        elif state.status is VmStatus.RUNNING and key not in self._active:
            self._take_slot(key, state)

    def set_limits(self, plan: objects.Plan) -> None:
        self._limits[plan.name] = PlanLimits.of(plan)

    async def load_limits(self, plan_name: str) -> None:
        plan = await self._objects.find(objects.Plan, plan_name)
        if plan is not None:
            self.set_limits(plan)

    def _take_slot(self, key: str, state: VmState) -> None:
        self._active.add(key)
        self._per_plan[state.plan] += 1
        if state.host:
            self._per_host[(state.plan, state.host)] += 1

    def finished(self, key: str) -> None:
        """A VM ended: free its slot (or its place in the queue) and look for the next."""
        state = self._states(key)
        if key in self._active:
            self._active.discard(key)
            self._per_plan[state.plan] -= 1
            if state.host:
                self._per_host[(state.plan, state.host)] -= 1
        queue = self._queues.get(state.plan)
        if queue and key in queue:
            queue.remove(key)
        self._kick.set()

    def kick(self) -> None:
        """Look at the queues again (new VMs were queued)."""
        self._kick.set()

    def ready(self) -> list[str]:
        """Queued VMs that may start now, in queue order, within both caps."""
        ready: list[str] = []
        for plan, queue in self._queues.items():
            limits = self._limits.get(plan, PlanLimits())
            for key in list(queue):
                if self._per_plan[plan] >= limits.max_in_flight:
                    break
                state = self._states(key)
                if state.host and self._per_host[(plan, state.host)] >= limits.per_host:
                    continue
                queue.remove(key)
                self._take_slot(key, state)
                ready.append(key)
        return ready

    async def run(self, start: Callable[[str], None]) -> None:
        """Call ``start(key)`` for each VM as it gets its slot, until cancelled."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            for key in self.ready():
                start(key)
