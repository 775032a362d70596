"""What the page shows, read from the KV views: providers, plans, migrations, VMs.

Every value is built from the shapes ``ferry.proto`` owns (the objects people
apply, the per-VM state the controller stores), turned into plain JSON for the
page. Nothing secret is in them: a Provider names its Secret, it does not hold
it, and the console drops even the name.

Each snapshot carries the audit stream's position taken *before* the views were
read; the page follows the stream from the next sequence, so an event that
lands while the snapshot is read is delivered, never lost (at worst it repeats
what the snapshot already shows, and applying it again changes nothing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec
from pydantic import ValidationError

from ferry.bus import Bus
from ferry.console.probes import Probes
from ferry.proto import migration, objects, subjects
from ferry.proto.inventory import Vm
from ferry.proto.phases import StepStatus
from ferry.proto.state import VmState, parse_iso
from ferry.proto.subjects import Bucket, Service
from ferry.runtime import estimates

log = logging.getLogger(__name__)

Json = dict[str, Any]


async def declared(bus: Bus) -> bool:
    """Whether the services have declared what the console reads (it declares nothing:
    its identity may only read)."""
    try:
        await bus.events_position()
        for bucket in (Bucket.OBJECTS, Bucket.VMS):
            await bus.kv(bucket, dict).keys()
    except Exception:  # the client's not-found errors differ by what is missing
        return False
    return True


class Inventories:
    """The last inventory the controller published per source, read from the audit stream
    incrementally (each snapshot reads only what arrived since the last one)."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, migration.InventoryRead]] = {}  # provider -> (time, read)
        self._after = 0
        self._lock = asyncio.Lock()

    async def catch_up(self, bus: Bus) -> dict[str, tuple[str, migration.InventoryRead]]:
        async with self._lock:
            subject = subjects.events_named(Service.CONTROLLER, "inventory_read")
            async for record in bus.records(subject, since=self._after + 1, follow=False):
                msg = record.message
                if isinstance(msg, migration.InventoryRead):
                    self.last[msg.provider] = (record.envelope.time, msg)
                self._after = record.sequence
            return dict(self.last)


async def snapshot(
    bus: Bus, inventories: Inventories | None = None, probes: Probes | None = None
) -> Json:
    position = await bus.events_position()
    docs = await _objects(bus)
    vms = await vm_states(bus)
    read = await inventories.catch_up(bus) if inventories is not None else {}
    return {
        "position": position,
        "time": time.time(),
        "providers": [
            _provider(p, vms, read.get(p.name)) for p in docs if isinstance(p, objects.Provider)
        ],
        "plans": [
            _plan(p, docs, vms, probes, _listed(p, read))
            for p in docs
            if isinstance(p, objects.Plan)
        ],
        "migrations": sorted(
            (_migration(m, vms) for m in docs if isinstance(m, objects.Migration)),
            key=lambda m: str(m["started"] or ""),
            reverse=True,
        ),
    }


async def _objects(bus: Bus) -> list[objects.FerryObjectBase]:
    store = bus.kv(Bucket.OBJECTS, dict)
    found: list[objects.FerryObjectBase] = []
    for key in await store.keys():
        entry = await store.get(key)
        if entry is None:
            continue
        try:
            found.append(objects.from_document(dict(entry.value)))
        except (ValidationError, ValueError) as bad:
            log.warning("object %s does not parse; not shown: %s", key, bad)
    return found


async def migrations(bus: Bus) -> list[objects.Migration]:
    return [m for m in await _objects(bus) if isinstance(m, objects.Migration)]


async def vm_states(bus: Bus) -> list[VmState]:
    store = bus.kv(Bucket.VMS, VmState)
    states = []
    for key in await store.keys():
        try:
            entry = await store.get(key)
        except Exception as bad:  # one undecodable state must not blank the page
            log.warning("VM state %s does not decode; not shown: %s", key, bad)
            continue
        if entry is not None:
            states.append(entry.value)
    return sorted(states, key=lambda s: (s.migration, s.seq))


def _inventory_vm(inv: Vm) -> Json:
    return {
        "id": inv.id,
        "name": inv.name,
        "power": str(inv.power_state),
        "cpus": inv.cpu_sockets * inv.cpu_cores * inv.cpu_threads,
        "memory_mib": inv.memory_mib,
        "host": inv.host,
        "disks": [
            {"name": d.name, "capacity": d.capacity, "allocated": d.allocated} for d in inv.disks
        ],
        "warnings": list(inv.warnings),
    }


def _provider(
    p: objects.Provider, vms: list[VmState], read: tuple[str, migration.InventoryRead] | None
) -> Json:
    """The source's VMs as the controller last read them; before any read, those seen in
    migrations."""
    seen: dict[str, Json] = {}
    for state in vms:
        if state.provider.provider == p.name:
            seen[state.inventory.id] = _inventory_vm(state.inventory)
    when, last = read if read is not None else ("", None)
    return {
        "name": p.name,
        "type": str(p.spec.type),
        "url": p.spec.url,
        "phase": p.status.phase,
        "inventory": [_inventory_vm(v) for v in last.vms] if last else list(seen.values()),
        "inventory_read": when,
        "inventory_error": last.error if last else "",
        "inventory_left_out": last.left_out if last else 0,
    }


def _listed(p: objects.Plan, read: dict[str, tuple[str, migration.InventoryRead]]) -> list[Vm]:
    """The plan's source as the controller last read it (sizes for its estimate)."""
    got = read.get(p.spec.provider.source.name)
    return list(got[1].vms) if got is not None else []


def _plan(
    p: objects.Plan,
    docs: list[objects.FerryObjectBase],
    vms: list[VmState],
    probes: Probes | None = None,
    inventory: list[Vm] | None = None,
) -> Json:
    runs = [m for m in docs if isinstance(m, objects.Migration) and m.spec.plan.name == p.name]
    runs.sort(key=lambda m: m.status.started.timestamp() if m.status.started else 0.0)
    last = runs[-1] if runs else None
    return {
        "name": p.name,
        "source": p.spec.provider.source.name,
        "destination": p.spec.provider.destination.name,
        "warm": p.spec.warm,
        "description": p.spec.description,
        "vms": [{"id": v.id, "name": v.name} for v in p.spec.vms],
        "phase": p.status.phase,
        "succeeded": list(p.status.succeeded),
        "migrations": [m.name for m in runs],
        # preflight reasons of the latest run: what stops this plan from starting
        "reasons": dict(last.status.reasons) if last is not None else {},
        # before it runs: sizes and throughput from past runs, or a probe of the source
        **_estimate(p, docs, vms, probes, inventory or []),
    }


def _source(p: objects.Plan, docs: list[objects.FerryObjectBase]) -> objects.Provider | None:
    name = p.spec.provider.source.name
    return next((d for d in docs if isinstance(d, objects.Provider) and d.name == name), None)


def _estimate(
    p: objects.Plan,
    docs: list[objects.FerryObjectBase],
    vms: list[VmState],
    probes: Probes | None,
    inventory: list[Vm],
) -> Json:
    """The plan's estimate; with no history on its pair, the throughput of a probe read,
    or, while that probe runs, the default marked as such and ``probing`` set: the page
    then asks ``/api/plans/{plan}/estimate``, which waits for the probe."""
    probed, probing = None, False
    source = _source(p, docs)
    pair = p.spec.provider.source.name, p.spec.targetNamespace
    history = estimates.has_history(estimates.samples_of(vms), *pair)
    if probes is not None and source is not None and not history:
        probed = probes.cached(p, source, inventory)
        if probed is None:
            probed, probing = probes.pending(estimates.no_history_on(*pair)), True
    listed = inventory or (probes.read(p) if probes is not None else [])
    est = estimates.plan_estimate(p, vms, listed, now=time.time(), probed=probed)
    # a source that cannot run warm: the page shows the cold figures only, as the CLI does
    why = estimates.cold_only(source)
    return {"estimate": msgspec.to_builtins(est), "probing": probing, "cold_only": why}


async def plan_estimate(
    bus: Bus, name: str, probes: Probes, inventories: Inventories
) -> Json | None:
    """One plan's estimate, waiting for its pair's probe when it has no history; None when
    there is no such plan."""
    docs = await _objects(bus)
    plan = next((d for d in docs if isinstance(d, objects.Plan) and d.name == name), None)
    if plan is None:
        return None
    vms = await vm_states(bus)
    source = _source(plan, docs)
    pair = plan.spec.provider.source.name, plan.spec.targetNamespace
    inventory = _listed(plan, await inventories.catch_up(bus))
    if source is not None and not estimates.has_history(estimates.samples_of(vms), *pair):
        await probes.wait(plan, source, inventory)
    return _estimate(plan, docs, vms, probes, inventory)


def _migration(m: objects.Migration, vms: list[VmState]) -> Json:
    mine = [s for s in vms if s.migration == m.name]
    est = estimates.recorded(m)
    guessed: dict[str, float] = {}
    if est is not None:
        for v in est.vms:
            guessed[v.vm] = v.warm_duration if est.warm else v.cold_duration
    errors = {a.vm: a.error for a in estimates.accuracy(est, mine)} if est else {}
    return {
        "name": m.name,
        "plan": m.spec.plan.name,
        "phase": m.status.phase.shown,
        "ended": m.status.phase.ended,
        "started": m.status.started.isoformat() if m.status.started else None,
        "completed": m.status.completed.isoformat() if m.status.completed else None,
        "cutover": m.spec.cutover.isoformat() if m.spec.cutover else None,
        "reasons": dict(m.status.reasons),
        "vms": [
            {**vm(s), "estimated": guessed.get(s.vm), "estimate_error": errors.get(s.name)}
            for s in mine
        ],
    }


def vm(s: VmState, now: float | None = None) -> Json:
    """One VM's pipeline: each step with state, attempt and duration; disks; errors."""
    now = time.time() if now is None else now
    return {
        "key": f"{s.migration}/{s.vm}",
        "vm": s.vm,
        "name": s.name,
        "plan": s.plan,
        "migration": s.migration,
        "status": str(s.status),
        "phase": s.phase,
        "flow": str(s.flow),
        "warm": s.warm,
        "precopy": s.precopy,
        "cutover": s.cutover or None,
        "host": s.host,
        "started": s.started,
        "ended": s.ended,
        "steps": [
            {
                "name": step.name,
                "service": step.service,
                "status": str(step.status),
                "attempt": step.attempt,
                "runs": step.runs,
                "seconds": _duration(step.started, step.ended, step.status, now),
                "reason": step.reason,
            }
            for step in s.steps
        ],
        "disks": [msgspec.to_builtins(d) for d in s.disks],
        "done": s.done_bytes,
        "total": s.total_bytes,
        "errors": [msgspec.to_builtins(e) for e in s.errors],
        "cancel_reason": s.cancel_reason,
    }


def _duration(started: str, ended: str, status: StepStatus, now: float) -> float | None:
    if not started:
        return None
    end = parse_iso(ended) if ended else (now if status is StepStatus.RUNNING else None)
    return None if end is None else round(max(0.0, end - parse_iso(started)), 1)
