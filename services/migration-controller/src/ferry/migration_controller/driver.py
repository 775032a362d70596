"""The controller's core: change a VM's state, then act on what the engine said.

Every change goes through :meth:`Driver.transition`: the engine changes a copy
of the VM's state, the copy is stored with compare-and-set, and only then are
the engine's actions carried out (run a step, publish, set an alarm, restore
power, clean up, mark canceled, finish). A crash between the two repeats the
actions on start-up, never loses the change; the commands repeated have the
ids they had the first time, so the bus drops the duplicates.

A crash is not the only way to lose the actions: a publish can fail after the
change was stored. The event that caused the change is then redelivered, and
finds nothing to change (its step is already done). So a redelivered event that
changes nothing re-sends the command of the VM's running step (built again from
the stored state: the same id, dropped by the bus if it did go out), and the
scheduler's and timers' transitions are retried until they are stored and done,
never only logged.

One lock per VM orders its transitions; different VMs move in parallel.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ferry.bus import Bus, cancellation
from ferry.migration_controller import engine, itinerary, steps
from ferry.migration_controller.completion import Completion, mark_finalized
from ferry.migration_controller.scheduler import Scheduler
from ferry.migration_controller.settings import ControllerSettings
from ferry.migration_controller.sources import PERMANENT, Sources
from ferry.migration_controller.store import VmStates
from ferry.migration_controller.timers import Timers
from ferry.proto.base import Message
from ferry.proto.phases import Phase, StepStatus
from ferry.proto.state import VmState
from ferry.proto.subjects import Service

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0

Change = Callable[[VmState], list[engine.Action]]


class Driver:
    def __init__(
        self,
        bus: Bus,
        settings: ControllerSettings,
        vms: VmStates,
        *,
        scheduler: Scheduler,
        timers: Timers,
        completion: Completion,
        sources: Sources,
        hooks: steps.Hooks,
        clock: Callable[[], float],
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.vms = vms
        self.scheduler = scheduler
        self.timers = timers
        self.completion = completion
        self.sources = sources
        self.hooks = hooks
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._local: dict[str, asyncio.Task[steps.Outcome]] = {}

    def state(self, key: str) -> VmState:
        return self.vms.require(key)

    # -- background work -------------------------------------------------------------

    def spawn(self, work: Awaitable[None]) -> None:
        """Run ``work`` in the background; its failure is logged, not lost."""

        async def guarded() -> None:
            try:
                await work
            except Exception:
                log.exception("controller task failed")

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tasks(self) -> list[asyncio.Task[Any]]:
        return list(self._tasks)

    def start(self, key: str) -> None:
        """A queued VM got its slot (the scheduler's callback)."""
        now = self.clock()
        self.spawn(self._until_done(key, lambda s: engine.start(s, now)))

    def tick(self, key: str) -> None:
        """A VM's alarm rang (the timers' callback)."""
        now = self.clock()
        self.spawn(self._until_done(key, lambda s: engine.tick(s, now)))

    async def _until_done(self, key: str, fn: Change) -> None:
        """A transition nobody redelivers: retried with backoff until it is stored and
        its actions done. A retry after the store finds nothing to change and re-sends
        the running step's command instead."""
        delay = RETRY_FIRST_SECONDS
        resend = False
        while True:
            try:
                await self.transition(key, fn, resend=resend)
                return
            except Exception as error:
                log.warning("transition of %s failed (%s); retrying in %.1fs", key, error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            resend = True

    async def stop_local(self, key: str) -> None:
        """Stop a controller-owned step in progress (a power-off, a hook), and wait for it."""
        local = self._local.pop(key, None)
        if local is not None:
            local.cancel()
            await asyncio.gather(local, return_exceptions=True)

    def forget(self, keys: list[str]) -> None:
        """Drop the locks of VMs whose migration ended (nothing holds them any more)."""
        for key in keys:
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                del self._locks[key]

    # -- change, then act ----------------------------------------------------------------

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def transition(self, key: str, fn: Change, *, resend: bool = False) -> None:
        """Change the VM's state with ``fn``, store it, then act. With ``resend`` (the
        cause was redelivered), a change that changes nothing re-sends the running
        step's command: its first sending may have failed after the store."""
        async with self._lock(key):
            before = self.vms.get(key)
            after, actions = await self.vms.change(key, fn)
        if actions:
            await self.perform(key, actions)
        elif resend and after is before:
            await self.resend(key)

    async def resend(self, key: str) -> None:
        """Send the running service step's command again, built as the first time."""
        state = self.state(key)
        current = state.current
        if current is None or current.status is not StepStatus.RUNNING:
            return
        if self._controller_owns(key, current.name):
            return  # the controller's own steps are resumed where they run, not re-sent
        log.info("re-sending the command of %s step %s", key, current.name)
        await self.run_step(key, current.name, current.attempt)

    async def perform(self, key: str, actions: list[engine.Action]) -> None:
        emits: list[Message] = []
        finished = False
        for action in actions:
            if isinstance(action, engine.Emit):
                emits.append(action.event)
                continue
            if isinstance(action, engine.Run) and not self._controller_owns(key, action.step):
                # a service's step only builds its command: send it with the events before it
                await self.run_step(key, action.step, action.attempt, emits)
                continue
            if emits:
                await self.bus.publish_many(emits)
                emits = []
            if isinstance(action, engine.Run):
                await self.run_step(key, action.step, action.attempt)
            elif isinstance(action, engine.WakeAt):
                self.timers.wake(key, action.at)
            elif isinstance(action, engine.RestorePower):
                await self.transition(key, await self.completion.restore_power(self.state(key)))
            elif isinstance(action, engine.Cleanup):
                await self.completion.cleanup(self.state(key), vm_too=action.vm)
            elif isinstance(action, engine.MarkCanceled):
                state = self.state(key)
                await cancellation.request(
                    self.bus, state.migration, state.vm, state.cancel_reason or "canceled"
                )
            elif isinstance(action, engine.Finished):
                finished = True
        if emits:
            await self.bus.publish_many(emits)
        if finished:
            await self.transition(key, mark_finalized)
            self.scheduler.finished(key)
            await self.completion.maybe_complete(self.state(key).migration)

    def _controller_owns(self, key: str, name: str) -> bool:
        return itinerary.step_of(self.state(key).flow, name).owner is Service.CONTROLLER

    async def run_step(
        self, key: str, name: str, attempt: int, batch: list[Message] | None = None
    ) -> None:
        """Run one attempt of a step; its outcome becomes the next transition.

        A service's step builds its command: appended to ``batch`` when given (sent
        with the events before it), else published. A controller-owned step does
        its work here and can be canceled (:meth:`stop_local`).
        """
        state = self.state(key)
        if await self._window_holds(key, state, name):
            return
        step = itinerary.step_of(state.flow, name)
        ctx = steps.StepContext(
            state=state,
            attempt=attempt,
            source=self.sources.lazy(state.provider),
            hooks=self.hooks,
            now=self.clock(),
            shutdown_timeout=self.settings.controller.shutdown_timeout_seconds,
            label=engine.label(this) if (this := state.step(name)) else name,
            bandwidth=self.scheduler.ledger.bandwidth(state),
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
            permanent = isinstance(err, PERMANENT)
            reason = str(getattr(err, "reason", "") or err) or type(err).__name__
            now = self.clock()
            await self.transition(
                key, lambda s: engine.step_failed(s, name, attempt, reason, permanent, now)
            )
            return
        finally:
            if self._local.get(key) is task:
                del self._local[key]
        await self._outcome(key, name, outcome, batch)

    async def _window_holds(self, key: str, state: VmState, name: str) -> bool:
        """A closed window holds the VM before this step: it looks again when one opens.

        Not the warm pause (it waits on its own) and not once the cutover time has
        come: a cutover someone asked for goes ahead.
        """
        now = self.clock()
        if name == Phase.COPYING_PAUSED.value or (state.cutover and now >= state.cutover):
            return False
        closed = self.scheduler.closed(state, now)
        if closed is None:
            return False
        until, why = closed
        log.info("VM %s waits before %s: %s", state.name, name, why)
        await self.transition(key, lambda s: engine.step_wait(s, name, until))
        return True

    async def _outcome(
        self, key: str, name: str, outcome: steps.Outcome, batch: list[Message] | None
    ) -> None:
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
