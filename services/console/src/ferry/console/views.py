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

import logging
import time
from typing import Any

import msgspec
from pydantic import ValidationError

from ferry.bus import Bus
from ferry.proto import objects
from ferry.proto.phases import StepStatus
from ferry.proto.state import VmState, parse_iso
from ferry.proto.subjects import Bucket
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


async def snapshot(bus: Bus) -> Json:
    position = await bus.events_position()
    docs = await _objects(bus)
    vms = await vm_states(bus)
    return {
        "position": position,
        "time": time.time(),
        "providers": [_provider(p, vms) for p in docs if isinstance(p, objects.Provider)],
        "plans": [_plan(p, docs, vms) for p in docs if isinstance(p, objects.Plan)],
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


def _provider(p: objects.Provider, vms: list[VmState]) -> Json:
    seen: dict[str, Json] = {}
    for state in vms:
        if state.provider.provider == p.name:
            inv = state.inventory
            seen[inv.id] = {
                "id": inv.id,
                "name": inv.name,
                "power": str(inv.power_state),
                "cpus": inv.cpu_sockets * inv.cpu_cores * inv.cpu_threads,
                "memory_mib": inv.memory_mib,
                "host": inv.host,
                "disks": [
                    {"name": d.name, "capacity": d.capacity, "allocated": d.allocated}
                    for d in inv.disks
                ],
                "warnings": list(inv.warnings),
            }
    return {
        "name": p.name,
        "type": str(p.spec.type),
        "url": p.spec.url,
        "phase": p.status.phase,
        "inventory": list(seen.values()),
    }


def _plan(p: objects.Plan, docs: list[objects.FerryObjectBase], vms: list[VmState]) -> Json:
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
        # before it runs: sizes and throughput from past runs (the console reads no source)
        "estimate": msgspec.to_builtins(estimates.plan_estimate(p, vms, now=time.time())),
    }


def _migration(m: objects.Migration, vms: list[VmState]) -> Json:
    mine = [s for s in vms if s.migration == m.name]
    return {
        "name": m.name,
        "plan": m.spec.plan.name,
        "phase": m.status.phase.shown,
        "ended": m.status.phase.ended,
        "started": m.status.started.isoformat() if m.status.started else None,
        "completed": m.status.completed.isoformat() if m.status.completed else None,
        "cutover": m.spec.cutover.isoformat() if m.spec.cutover else None,
        "reasons": dict(m.status.reasons),
        "vms": [vm(s) for s in mine],
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
