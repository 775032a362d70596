"""One small async function per itinerary step.

A step either builds the command for the service that owns it (the controller
publishes it and waits for that service's event), or — for the steps the
controller owns (power, snapshots, hooks, the warm pause) — does the work through
the provider seam and says it is done. Commands are built only from the stored
state, so the same step and attempt always make the same command, hence the same
message id: re-dispatching after a restart is deduplicated by the bus.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from ferry.proto import conversion, migration, vm, volume
from ferry.proto.base import Command, Event
from ferry.proto.inventory import PowerState
from ferry.proto.inventory import Vm as InventoryVm
from ferry.proto.phases import Phase
from ferry.proto.state import CopyRound, VmState


class PowerSource(Protocol):
    """What the controller asks of a source (a subset of ``ferry.providers.base.Provider``)."""

    async def power_state(self, vm: InventoryVm) -> PowerState: ...

    async def shutdown(self, vm: InventoryVm, timeout: float) -> bool: ...  # noqa: ASYNC109

    async def power_on(self, vm: InventoryVm) -> None: ...


class Hooks(Protocol):
    async def run(self, hook: str, state: VmState) -> None: ...


@dataclass(frozen=True)
class Dispatch:
    """Publish this command; the step completes on the owning service's event."""

    command: Command


@dataclass(frozen=True)
class Done:
    """The step finished here; ``patch`` folds its result into the state."""

    patch: Callable[[VmState], None] | None = None
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Wait:
    """Look again at ``until`` (epoch seconds): the warm precopy pause."""

    until: float


@dataclass(frozen=True)
class Repeat:
    """Run the steps from ``phase`` up to this one again (another precopy round)."""

    phase: Phase


Outcome = Dispatch | Done | Wait | Repeat


@dataclass
class StepContext:
    state: VmState
    attempt: int
    source: PowerSource
    hooks: Hooks
    now: float = field(default_factory=time.time)
    shutdown_timeout: float = 300.0
    label: str = ""  # the step's name for this run, as commands carry it (engine.label)
    # The bandwidth budgets the VM's copy moves under (the scheduler's, when the step runs).
    bandwidth: list[volume.Bandwidth] = field(default_factory=list)

    def ids(self) -> dict[str, Any]:
        s = self.state
        return {"plan": s.plan, "migration": s.migration, "vm": s.vm, "attempt": self.attempt}

    def event_ids(self) -> dict[str, str]:
        s = self.state
        return {"plan": s.plan, "migration": s.migration, "vm": s.vm}


StepFn = Callable[[StepContext], Coroutine[Any, Any, Outcome]]


# Controller-owned steps ----------------------------------------------------------


async def started(ctx: StepContext) -> Outcome:
    return Done()


async def completed(ctx: StepContext) -> Outcome:
    return Done()


def run_hook(phase: Phase) -> StepFn:
    async def hook(ctx: StepContext) -> Outcome:
        await ctx.hooks.run(ctx.state.hooks[phase.value], ctx.state)
        return Done()

    return hook


async def store_power_state(ctx: StepContext) -> Outcome:
    if ctx.state.source_power:  # stored by an earlier run of this step: keep the first answer
        return Done()
    power = await ctx.source.power_state(ctx.state.inventory)

    def patch(s: VmState) -> None:
        s.source_power = power.value

    stored = migration.SourcePowerStored(**ctx.event_ids(), state=power.value)
    return Done(patch, [stored])


async def power_off_source(ctx: StepContext) -> Outcome:
    forced = False
    vm = ctx.state.inventory
    # Look before acting: after a restart this step runs again, and the source may be off already.
    if (
        ctx.state.source_power != PowerState.OFF.value
        and await ctx.source.power_state(vm) != PowerState.OFF
    ):
        forced = await ctx.source.shutdown(vm, ctx.shutdown_timeout)

    def patch(s: VmState) -> None:
        s.powered_off = True

    return Done(patch, [migration.SourcePoweredOff(**ctx.event_ids(), forced=forced)])


async def create_snapshot(ctx: StepContext) -> Outcome:
    """Mark the point the next delta copies from.

    Change tracking is the volume-service's (it asks the provider for changed
    blocks since the previous round, keyed by the precopy number in CopyDisks),
    so on the controller's side a snapshot is the round boundary itself.
    """
    return Done()


async def copying_paused(ctx: StepContext) -> Outcome:
    """Between precopies: go to cutover when its time came, else copy again later."""
    s = ctx.state
    if s.cutover and ctx.now >= s.cutover:
        return Done()
    if s.precopy + 1 >= s.max_precopies:
        return Done()  # out of rounds: cut over now rather than copy forever
    step = s.step(Phase.COPYING_PAUSED.value)
    began = step.wait_until if step and step.wait_until else ctx.now + s.precopy_interval
    if ctx.now >= began:
        return Repeat(Phase.CREATE_SNAPSHOT)
    return Wait(began)  # the engine also wakes the step at the cutover time


# Service-owned steps ----------------------------------------------------------------


def create_volumes(source: volume.VolumeSource) -> StepFn:
    async def create(ctx: StepContext) -> Outcome:
        s = ctx.state
        cmd = volume.CreateVolumes(
            **ctx.ids(),
            step=ctx.label,
            namespace=s.namespace,
            source=source,
            provider=s.provider,
            inventory=s.inventory,
            targets=s.volume_targets,
        )
        return Dispatch(cmd)

    return create


async def allocate_disks(ctx: StepContext) -> Outcome:
    cmd = volume.AllocateDisks(**ctx.ids(), step=ctx.label, namespace=ctx.state.namespace)
    return Dispatch(cmd)


def copy_disks(phase: Phase, final: bool) -> StepFn:
    async def copy(ctx: StepContext) -> Outcome:
        s = ctx.state
        cmd = volume.CopyDisks(
            **ctx.ids(),
            step=ctx.label,
            namespace=s.namespace,
            provider=s.provider,
            inventory=s.inventory,
            precopy=s.precopy if s.warm else 0,
            final=final or not s.warm,
            warm=s.warm,
            since=s.checkpoint if s.warm else "",
            bandwidth=ctx.bandwidth,
        )
        return Dispatch(cmd)

    return copy


def convert_guest(mode: conversion.ConversionMode) -> StepFn:
    async def convert(ctx: StepContext) -> Outcome:
        s = ctx.state
        cmd = conversion.ConvertGuest(
            **ctx.ids(),
            step=ctx.label,
            namespace=s.namespace,
            mode=mode,
            provider=s.provider,
            inventory=s.inventory,
            volumes=s.volumes,
            bandwidth=ctx.bandwidth,
        )
        return Dispatch(cmd)

    return convert


async def create_vm(ctx: StepContext) -> Outcome:
    s = ctx.state
    cmd = vm.CreateVm(
        **ctx.ids(),
        step=ctx.label,
        namespace=s.namespace,
        target_name=s.target_name,
        inventory=s.inventory,
        volumes=s.volumes,
        networks=s.network_targets,
        inspection=s.inspection,
        run=False,  # PowerOn is its own step, so that its failure is visible as such
    )
    return Dispatch(cmd)


async def power_on(ctx: StepContext) -> Outcome:
    s = ctx.state
    cmd = vm.PowerOn(**ctx.ids(), step=ctx.label, namespace=s.namespace, target_name=s.target_name)
    return Dispatch(cmd)


# Folding the services' results into the state ------------------------------------


def absorb_volumes(s: VmState, evt: Event) -> None:
    got = getattr(evt, "volumes", None)
    if got:
        by_disk = {v.disk_id: v for v in s.volumes}
        by_disk.update({v.disk_id: v for v in got})
        order = [d.id for d in s.inventory.disks]
        s.volumes = sorted(
            by_disk.values(),
            key=lambda v: order.index(v.disk_id) if v.disk_id in order else len(order),
        )


def absorb_copies(s: VmState, evt: Event) -> None:
    if isinstance(evt, volume.DisksCopied):
        # The volumes as bound after the copy (a path once the importer wrote them):
        # without a conversion after it (raw copy), CreateVM takes them from here.
        absorb_volumes(s, evt)
        if s.warm:
            # The source's changes are counted from here by the next round.
            s.checkpoint = evt.checkpoint
            s.rounds.append(
                CopyRound(
                    precopy=evt.precopy,
                    final=not evt.checkpoint and s.powered_off,
                    changed=evt.changed,
                    copied=sum(c.bytes_copied for c in evt.disks),
                    seconds=max((c.seconds for c in evt.disks), default=0.0),
                )
            )
        for copy in evt.disks:
            for disk in s.disks:
                if disk.id == copy.disk_id:
                    disk.done = disk.total
                    disk.checksum = f"{copy.target.algorithm}:{copy.target.digest}"


def absorb_conversion(s: VmState, evt: Event) -> None:
    if isinstance(evt, conversion.GuestConverted):
        s.inspection = evt.inspection
        absorb_volumes(s, evt)
        if not s.warm and not s.remote:  # the full conversion wrote the disks
            for disk in s.disks:
                disk.done = disk.total


class LocalHooks:
    """Runs a Hook's ``command`` as a child process (the local platform's hook runner).

    The hook sees the plan, migration, VM and target in its environment; it never
    sees credentials. A non-zero exit or the deadline fails the step.
    """

    def __init__(self, resolve: Callable[[str], Awaitable[tuple[list[str], int]]]) -> None:
        self._resolve = resolve

    async def run(self, hook: str, state: VmState) -> None:
        argv, deadline = await self._resolve(hook)
        if not argv:
            raise RuntimeError(f"hook {hook!r} has no command for the local platform")
        env = dict(os.environ)
        env.update(
            FERRY_PLAN=state.plan,
            FERRY_MIGRATION=state.migration,
            FERRY_VM=state.vm,
            FERRY_VM_NAME=state.name,
            FERRY_TARGET_NAME=state.target_name,
            FERRY_NAMESPACE=state.namespace,
        )
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), deadline)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"hook {hook!r} ran past its deadline of {deadline} s") from None
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise RuntimeError(f"hook {hook!r} exited with {proc.returncode}: {tail[0]}")
