"""Which queued VMs may start now: one scheduler across every plan.

A VM starts when three things have room: its plan (``maxInFlight``), its plan on
its source host (``maxInFlightPerHost``), and every Budget it touches (shared by
all plans: :mod:`ferry.migration_controller.budgets`). Plans with a higher
``priority`` go first; plans of equal priority take turns, one VM each, so a
big plan queued first does not starve a small one behind it.

The tables here are derived, never stored: on start-up the controller
re-indexes every stored VM (a running VM takes its slot again, a queued one
joins its plan's queue), so they need no persistence of their own. Budgets, and
the limits of every Plan known here (``maxInFlight``, priority, window), are
re-read from the objects bucket when a migration starts and every
``BUDGET_REFRESH`` seconds, which is also how an opening window, or a Plan's
window edited while its migration runs, is noticed.

Windows (a Plan's or a Budget's daily hours, UTC) hold starts the same way, and
also VMs already running: :meth:`Scheduler.closed` tells the driver, before each
step, whether the VM must wait for a window to open (it finishes the step it is
in first).

What holds each waiting VM is written to its Plan's status (a bounded sample)
so that ``ferry describe plan`` can say it; the scheduler also knows which VMs
belong to a migration: cancel, cutover and completion ask it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

from ferry.migration_controller.budgets import Ledger
from ferry.migration_controller.store import Objects, VmStates
from ferry.proto import objects
from ferry.proto.budget import Budget, Window
from ferry.proto.phases import VmStatus
from ferry.proto.state import VmState

log = logging.getLogger(__name__)

BUDGET_REFRESH = 10.0  # seconds between re-reads of the Budget objects
WINDOW_RECHECK = 300.0  # seconds between looks at a running VM held by a closed window
WAITING_SHOWN = 50  # waiting VMs named in a Plan's status; the rest are counted


@dataclass(frozen=True)
class PlanLimits:
    max_in_flight: int = 20
    per_host: int = 10
    priority: int = 0
    window: Window | None = None

    @classmethod
    def of(cls, plan: objects.Plan) -> PlanLimits:
        spec = plan.spec
        return cls(spec.maxInFlight, spec.maxInFlightPerHost, spec.priority, spec.window)


class Scheduler:
    def __init__(
        self,
        states: Callable[[str], VmState],
        objects_: Objects,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._states = states
        self._objects = objects_
        self._clock = clock
        self.ledger = Ledger()
        self._queues: dict[str, list[str]] = {}
        self._limits: dict[str, PlanLimits] = {}
        self._active: set[str] = set()
        self._per_plan: Counter[str] = Counter()
        self._per_host: Counter[tuple[str, str]] = Counter()
        self._by_migration: dict[str, list[str]] = {}
        self._kick = asyncio.Event()
        self._shown: dict[str, tuple[dict[str, str], int]] = {}

    def keys_of(self, migration: str) -> list[str]:
        """The VMs of a migration, in the order they were indexed (plan order)."""
        return self._by_migration.get(migration, [])

    def forget(self, migration: str) -> list[str]:
        """Drop an ended migration's VMs from the tables; returns their keys."""
        keys = self._by_migration.pop(migration, [])
        for key in keys:
            if key in self._active:  # only when its end was never carried out
                self.finished(key)
        return keys

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

    async def reload_limits(self) -> None:
        """Re-read the limits of every Plan known here: a Plan edited meanwhile applies."""
        for name in list(self._limits):
            before = self._limits[name]
            await self.load_limits(name)
            after = self._limits[name]
            if after != before:
                log.info("plan %s changed: window %s (was %s)", name, after.window, before.window)

    async def load_budgets(self) -> None:
        budgets = []
        for key in await self._objects.kv.keys(f"{Budget.KIND.lower()}."):
            entry = await self._objects.kv.get(key)
            if entry is None:
                continue
            found = objects.from_document(entry.value)
            if isinstance(found, Budget):
                budgets.append(found)
        self.ledger.set_budgets(budgets)

    def _take_slot(self, key: str, state: VmState) -> None:
        self._active.add(key)
        self._per_plan[state.plan] += 1
        if state.host:
            self._per_host[(state.plan, state.host)] += 1
        self.ledger.take(key, state)

    def finished(self, key: str) -> None:
        """A VM ended: free its slot (or its place in the queue) and look for the next."""
        state = self._states(key)
        if key in self._active:
            self._active.discard(key)
            self._per_plan[state.plan] -= 1
            if state.host:
                self._per_host[(state.plan, state.host)] -= 1
            self.ledger.give(key)
        queue = self._queues.get(state.plan)
        if queue and key in queue:
            queue.remove(key)
        self._kick.set()

    def kick(self) -> None:
        """Look at the queues again (new VMs were queued, budgets changed)."""
        self._kick.set()

    def hold(self, key: str, now: float) -> str | None:
        """What keeps a queued VM from starting now; ``None`` when nothing does."""
        state = self._states(key)
        limits = self._limits.get(state.plan, PlanLimits())
        window = limits.window
        if window is not None and not window.open_at(datetime.fromtimestamp(now, UTC)):
            return f"Plan {state.plan}: outside its window {window}"
        if self._per_plan[state.plan] >= limits.max_in_flight:
            return f"Plan {state.plan}: {limits.max_in_flight} VMs in flight (maxInFlight)"
        if state.host and self._per_host[(state.plan, state.host)] >= limits.per_host:
            return f"Plan {state.plan}: {limits.per_host} VMs on host {state.host} in flight"
        return self.ledger.hold(state, now)

    def closed(self, state: VmState, now: float) -> tuple[float, str] | None:
        """A running VM's closed windows: when to look again, and what holds it."""
        when = datetime.fromtimestamp(now, UTC)
        plan = self._limits.get(state.plan, PlanLimits()).window
        windows = [(f"Plan {state.plan}", plan)] if plan is not None else []
        shut = [
            (label, w) for label, w in windows + self.ledger.windows(state) if not w.open_at(when)
        ]
        if not shut:
            return None
        # Look again when the first of them opens (the others may still hold it then),
        # and every WINDOW_RECHECK seconds meanwhile: a Budget's window may change.
        opens = min(w.next_open(when).timestamp() for _, w in shut)
        why = "; ".join(f"{label}: outside its window {w}" for label, w in shut)
        return min(opens, now + WINDOW_RECHECK), why

    def ready(self) -> list[str]:
        """Queued VMs that may start now, by plan priority, equal plans taking turns."""
        now = self._clock()
        if self.ledger.closed_for_all(now):
            return []
        ready: list[str] = []

        def priority(plan: str) -> int:
            return -self._limits.get(plan, PlanLimits()).priority

        plans = sorted((p for p, q in self._queues.items() if q), key=priority)
        for _, group in groupby(plans, key=priority):
            turns = list(group)
            while turns:
                for plan in list(turns):
                    key = self._next(plan, now)
                    if key is None:
                        turns.remove(plan)
                        continue
                    self._take_slot(key, self._states(key))
                    ready.append(key)
                if self.ledger.closed_for_all(now):
                    return ready
        return ready

    def _next(self, plan: str, now: float) -> str | None:
        limits = self._limits.get(plan, PlanLimits())
        if self._per_plan[plan] >= limits.max_in_flight:
            return None
        queue = self._queues[plan]
        for i, key in enumerate(queue):
            if self.hold(key, now) is None:
                del queue[i]
                return key
        return None

    def waiting(self, plan: str) -> tuple[dict[str, str], int]:
        """Some of a plan's waiting VMs (by name) with what holds each, and how many wait."""
        now = self._clock()
        queue = self._queues.get(plan, [])
        shown = {}
        for key in queue[:WAITING_SHOWN]:
            shown[self._states(key).name] = self.hold(key, now) or "starting"
        return shown, len(queue)

    async def run(self, start: Callable[[str], None]) -> None:
        """Call ``start(key)`` for each VM as it gets its slot, until cancelled."""
        refreshed = self._clock()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), BUDGET_REFRESH)
            self._kick.clear()
            if self._clock() - refreshed >= BUDGET_REFRESH:
                refreshed = self._clock()
                try:
                    await self.load_budgets()
                    await self.reload_limits()
                except Exception:
                    log.exception("could not re-read the budgets and plans")
            for key in self.ready():
                start(key)

    async def report(self, every: float = 2.0) -> None:
        """Keep each plan's status saying what holds its waiting VMs, until cancelled."""
        while True:
            await asyncio.sleep(every)
            for plan in list(self._queues):
                shown = self.waiting(plan)
                if self._shown.get(plan) == shown:
                    continue
                try:
                    await self._objects.set_status(objects.Plan, plan, _waiting(*shown))
                except Exception:
                    log.exception("could not write the waiting VMs of plan %s", plan)
                    continue
                self._shown[plan] = shown
                if not shown[1]:
                    self._queues.pop(plan, None)
                    self._shown.pop(plan, None)


def _waiting(waiting: dict[str, str], count: int) -> Callable[[dict[str, Any]], None]:
    def change(status: dict[str, Any]) -> None:
        status.update(waiting=waiting, waitingCount=count)

    return change
