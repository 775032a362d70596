"""How a VM's state moves: pure functions from (state, what happened, now) to actions.

Nothing here does I/O. Each function changes the given :class:`VmState` in place
and returns what the caller must do next, in order: run a step, emit an event,
wake up later, restore the source's power, clean up, mark the VM canceled for
every service. The caller stores the state (compare-and-set) *before* doing the
actions, so a crash in between repeats actions (idempotent: deterministic ids)
and never loses a transition.

A message that does not fit the state — an event for a step that is not running,
a failure of an older attempt — changes nothing: redeliveries are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ferry.proto import migration
from ferry.proto.base import Event
from ferry.proto.inventory import PowerState
from ferry.proto.phases import Phase, StepStatus, VmStatus
from ferry.proto.state import StepState, VmError, VmState, now_iso, parse_iso


@dataclass(frozen=True)
class Run:
    """Run the step's function for this attempt (build and send its command, or do it)."""

    step: str
    attempt: int


@dataclass(frozen=True)
class Emit:
    event: Event


@dataclass(frozen=True)
class WakeAt:
    at: float


@dataclass(frozen=True)
class RestorePower:
    state: str


@dataclass(frozen=True)
class Cleanup:
    """Remove what this migration created for the VM: its volumes, and its VirtualMachine
    when one may exist (``vm``), so that a VM that did not make it leaves nothing behind."""

    vm: bool = False


@dataclass(frozen=True)
class MarkCanceled:
    """Write the VM's key in the cancel bucket so every service stops its work."""


@dataclass(frozen=True)
class Finished:
    status: VmStatus


Action = Run | Emit | WakeAt | RestorePower | Cleanup | MarkCanceled | Finished

RETRY_BASE_SECONDS = 2.0
RETRY_CAP_SECONDS = 120.0


def backoff(attempt: int, base: float = RETRY_BASE_SECONDS) -> float:
    return float(min(RETRY_CAP_SECONDS, base * 2 ** max(0, attempt - 1)))


def label(step: StepState) -> str:
    """The step's name for this run: ``CopyDisks``, then ``CopyDisks@1``… in warm precopy rounds.

    Message ids come from message content, so a second round's command and events
    must differ from the first's or the bus would drop them as duplicates.
    """
    return step.name if not step.runs else f"{step.name}@{step.runs}"


def ids(s: VmState) -> dict[str, Any]:
    """The ids every message about this VM carries."""
    return {"plan": s.plan, "migration": s.migration, "vm": s.vm}


def start(s: VmState, now: float) -> list[Action]:
    """A queued VM got its slot."""
    if s.status is not VmStatus.QUEUED:
        return []
    s.status = VmStatus.RUNNING
    s.started = now_iso(now)
    started = migration.VmStarted(**ids(s), itinerary=[x.name for x in s.steps], flow=s.flow.value)
    return [Emit(started), *advance(s, now)]


def advance(s: VmState, now: float) -> list[Action]:
    """Start the first step that is not completed, or end the VM when none is left."""
    if s.status is not VmStatus.RUNNING:
        return []
    while s.cursor < len(s.steps) and s.steps[s.cursor].status is StepStatus.COMPLETED:
        s.cursor += 1
    step = s.current
    if step is None:
        return _succeed(s, now)
    s.phase = step.name
    if step.status is StepStatus.RUNNING:
        return []
    if step.retry_at > now:
        return [WakeAt(step.retry_at)]
    step.status = StepStatus.RUNNING
    step.attempt += 1
    step.started = now_iso(now)
    step.ended = ""
    step.retry_at = 0.0
    begun = migration.StepStarted(
        **ids(s), step=label(step), service=step.service, attempt=step.attempt
    )
    if step.instant:
        return [Emit(begun), *step_done(s, step.name, now)]
    return [Emit(begun), Run(step.name, step.attempt)]


def _succeed(s: VmState, now: float) -> list[Action]:
    s.status = VmStatus.SUCCEEDED
    s.phase = Phase.COMPLETED.value
    s.ended = now_iso(now)
    took = now - parse_iso(s.started) if s.started else 0.0
    return [Emit(migration.VmCompleted(**ids(s), seconds=round(took, 3))), Finished(s.status)]


def _running(s: VmState, step: str) -> bool:
    cur = s.current
    return (
        s.status is VmStatus.RUNNING
        and cur is not None
        and cur.name == step
        and cur.status is StepStatus.RUNNING
    )


def step_done(s: VmState, step: str, now: float) -> list[Action]:
    """The running step finished (its event came, or the controller did it)."""
    if not _running(s, step):
        return []
    cur = s.steps[s.cursor]
    name = label(cur)
    cur.status = StepStatus.COMPLETED
    cur.ended = now_iso(now)
    cur.runs += 1
    cur.wait_until = 0.0
    took = now - parse_iso(cur.started) if cur.started else 0.0
    done = migration.StepCompleted(**ids(s), step=name, attempt=cur.attempt, seconds=round(took, 3))
    s.cursor += 1
    return [Emit(done), *advance(s, now)]


def step_wait(s: VmState, step: str, until: float) -> list[Action]:
    """The step looks again at ``until`` (or at the cutover, if that comes first)."""
    if not _running(s, step):
        return []
    s.steps[s.cursor].wait_until = until
    return [WakeAt(min(until, s.cutover) if s.cutover else until)]


def step_repeat(s: VmState, step: str, phase: str, now: float) -> list[Action]:
    """Another warm precopy round: the steps from ``phase`` through this one run again."""
    if not _running(s, step):
        return []
    first = next(i for i, x in enumerate(s.steps) if x.name == phase)
    for x in s.steps[first : s.cursor + 1]:
        x.status = StepStatus.PENDING
        x.attempt = 0
        x.wait_until = 0.0
    s.steps[s.cursor].runs += 1
    s.precopy += 1
    s.cursor = first
    return advance(s, now)


def step_failed(
    s: VmState, step: str, attempt: int, reason: str, permanent: bool, now: float
) -> list[Action]:
    """A step failed: retry it after a backoff, or — permanent, or out of attempts — fail the VM."""
    if not _running(s, step):
        return []
    cur = s.steps[s.cursor]
    if attempt and attempt != cur.attempt:
        return []  # a late failure of an attempt that was already retried
    final = permanent or cur.attempt >= s.max_attempts
    s.errors.append(
        VmError(step=step, attempt=cur.attempt, reason=reason, time=now_iso(now), permanent=final)
    )
    failed = migration.StepFailed(
        **ids(s), step=label(cur), attempt=cur.attempt, reason=reason, will_retry=not final
    )
    if not final:
        cur.status = StepStatus.PENDING
        cur.retry_at = now + backoff(cur.attempt, s.retry_base)
        cur.reason = reason
        return [Emit(failed), WakeAt(cur.retry_at)]
    cur.status = StepStatus.FAILED
    cur.reason = reason
    cur.ended = now_iso(now)
    return [Emit(failed), *_end(s, VmStatus.FAILED, now, reason=reason)]


def tick(s: VmState, now: float) -> list[Action]:
    """A wake-up: a retry whose backoff passed, or a paused step to look at again."""
    cur = s.current
    if s.status is not VmStatus.RUNNING or cur is None:
        return []
    if cur.status is StepStatus.PENDING:
        return advance(s, now)
    due = min(cur.wait_until, s.cutover) if s.cutover else cur.wait_until
    if cur.status is StepStatus.RUNNING and cur.wait_until and now >= due:
        return [Run(cur.name, cur.attempt)]
    return []


def cancel(s: VmState, reason: str, now: float) -> list[Action]:
    """Cancel in any phase; a VM that already ended stays as it ended (idempotent)."""
    if s.status.ended:
        return []
    s.cancel_reason = reason
    was_queued = s.status is VmStatus.QUEUED
    cur = s.current
    if (
        cur is not None
        and cur.status in (StepStatus.RUNNING, StepStatus.PENDING)
        and not was_queued
    ):
        cur.status = StepStatus.CANCELED
        cur.ended = now_iso(now)
    if was_queued:
        s.status = VmStatus.CANCELED
        s.ended = now_iso(now)
        s.phase = VmStatus.CANCELED.value
        return [Emit(migration.VmCanceled(**ids(s))), Finished(s.status)]
    return [MarkCanceled(), *_end(s, VmStatus.CANCELED, now)]


def needs_power_restore(s: VmState) -> bool:
    """The source ran before we touched it, and we started powering it off."""
    if s.source_power != PowerState.ON.value or s.power_restored:
        return False
    off = s.step(Phase.POWER_OFF_SOURCE.value)
    return s.powered_off or (off is not None and off.status is not StepStatus.PENDING)


def _started(s: VmState, phase: Phase) -> bool:
    step = s.step(phase.value)
    return step is not None and step.attempt > 0


def _cleanup(s: VmState) -> list[Action]:
    # Every itinerary creates volumes before the VirtualMachine, so no volumes, no VM either.
    if not _started(s, Phase.CREATE_DATA_VOLUMES):
        return []
    return [Cleanup(vm=_started(s, Phase.CREATE_VM))]


def finish_actions(s: VmState) -> list[Action]:
    """The side effects of a VM's end, again: after a crash between the end and them."""
    if not s.status.ended or s.finalized:
        return []
    actions: list[Action] = []
    if s.status is VmStatus.CANCELED and s.started:
        actions.append(MarkCanceled())
    if s.status is not VmStatus.SUCCEEDED:  # a migrated VM's source stays off
        if needs_power_restore(s):
            actions.append(RestorePower(s.source_power))
        actions.extend(_cleanup(s))
    return [*actions, Finished(s.status)]


def _end(s: VmState, status: VmStatus, now: float, reason: str = "") -> list[Action]:
    step = s.current.name if s.current else ""
    s.status = status
    s.ended = now_iso(now)
    s.phase = status.value
    restore = needs_power_restore(s)
    actions: list[Action] = []
    if restore:
        actions.append(RestorePower(s.source_power))
    actions.extend(_cleanup(s))
    if status is VmStatus.FAILED:
        actions.append(
            Emit(migration.VmFailed(**ids(s), step=step, reason=reason, power_restored=restore))
        )
    else:
        actions.append(Emit(migration.VmCanceled(**ids(s), step=step, power_restored=restore)))
    actions.append(Finished(status))
    return actions


def progress(s: VmState, step: str, disk_id: str, done: int, total: int) -> list[Action]:
    """Bytes done of one disk; events of a step that is not running are dropped."""
    if not _running(s, step) and step:
        return []
    disk = next((d for d in s.disks if d.id == disk_id), None)
    if disk is None:
        return []
    disk.done = max(0, min(done, total or disk.total))
    if total:
        disk.total = total
    event = migration.Progress(
        **ids(s),
        step=s.phase,
        done=s.done_bytes,
        total=s.total_bytes,
        disks={d.id: d.done for d in s.disks},
    )
    return [Emit(event)]


def set_cutover(s: VmState, cutover: float) -> list[Action]:
    s.cutover = cutover
    cur = s.current
    if s.status is VmStatus.RUNNING and cur is not None and cur.wait_until:
        return [WakeAt(min(cur.wait_until, cutover))]
    return []
