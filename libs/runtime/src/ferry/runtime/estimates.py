"""Duration and downtime of a plan before it runs, from what past migrations measured.

History is what the controller already stores: every finished VM's state in
``ferry-vms`` carries its disks' bytes and each step's start and end. A VM that
succeeded is one sample for its source/target pair (source provider and host,
target namespace): copy throughput (bytes over the seconds of the step that
wrote the disks), conversion time, and the rest of its steps as overhead. No
new bookkeeping, so a migration run before this module existed already counts.

With no sample on a pair, each input falls back to a stated default, marked
``measured=False``: the estimate is still made and says what it assumed.

Cold: the source is off for the whole run, so downtime is the VM's duration.
Warm: the first copy runs with the source up; downtime is the final delta (a
stated fraction of the bytes), the conversion and the boot.
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Iterable, Sequence

import msgspec

from ferry.bus import Bus
from ferry.proto.estimate import Input, PlanEstimate, VmEstimate
from ferry.proto.inventory import Vm
from ferry.proto.objects import Plan
from ferry.proto.phases import Flow, Phase, StepStatus, VmStatus
from ferry.proto.state import VmState, VmView, now_iso, parse_iso
from ferry.proto.subjects import Bucket
from ferry.proto.volume import SourceRef

# Defaults when a pair has no history; printed with every estimate that uses them.
ASSUMED_THROUGHPUT = 50 * 1024 * 1024  # B/s: a 1 GbE link shared with a busy datastore
ASSUMED_CONVERSION = 180.0  # s: virt-v2v in place on a small Linux guest
ASSUMED_OVERHEAD = 60.0  # s: volumes, pvcinit, power calls, VM creation
ASSUMED_FINAL_DELTA = 0.05  # of the bytes changed since the last precopy
ASSUMED_BOOT = 30.0  # s: PowerOn until the VM reports running

_WRITES_DISKS = {Phase.COPY_DISKS, Phase.FINALIZE}
_BOOT = {Phase.CREATE_VM, Phase.POWER_ON}


class Stored(VmView, kw_only=True):
    """A stored VM state read for its measurements: the view plus its provider."""

    provider: SourceRef | None = None


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    source: str  # provider@host
    target: str  # namespace
    bytes: int
    copy_seconds: float
    conversion_seconds: float
    boot_seconds: float
    total_seconds: float


def _seconds(started: str, ended: str) -> float:
    return max(0.0, parse_iso(ended) - parse_iso(started)) if started and ended else 0.0


def source_of(provider: str, host: str) -> str:
    return f"{provider}@{host}" if host else provider


def sample(state: Stored | VmState) -> Sample | None:
    """The measurements of a VM that succeeded; None when it holds none worth learning from."""
    if state.status is not VmStatus.SUCCEEDED or state.provider is None or not state.total_bytes:
        return None
    copy = conversion = boot = 0.0
    for step in state.steps:
        if step.status is not StepStatus.COMPLETED:
            continue
        took = _seconds(step.started, step.ended)
        if step.name in _WRITES_DISKS or (
            step.name == Phase.CONVERT_GUEST and state.flow is Flow.CONVERSION
        ):
            copy += took  # a full conversion writes the disks: its time is the copy's
        elif step.name == Phase.CONVERT_GUEST:
            conversion += took
        elif step.name in _BOOT:
            boot += took
    total = _seconds(state.started, state.ended)
    if copy <= 0 or total <= 0:
        return None
    return Sample(
        source=source_of(state.provider.provider, state.host),
        target=state.namespace,
        bytes=state.total_bytes,
        copy_seconds=copy,
        conversion_seconds=conversion,
        boot_seconds=boot,
        total_seconds=total,
    )


def _pick(samples: Sequence[Sample], provider: str, target: str) -> tuple[list[Sample], str]:
    """The samples of this pair; the provider's hosts together when one host has none."""
    mine = [s for s in samples if s.target == target and s.source.split("@")[0] == provider]
    if not mine:
        return [], ""
    sources = sorted({s.source for s in mine})
    return mine, f"{len(mine)} VM(s) on {', '.join(sources)} -> {target}"


def inputs(samples: Sequence[Sample], provider: str, target: str) -> list[Input]:
    mine, basis = _pick(samples, provider, target)
    if not mine:
        why = f"no finished migration on {provider} -> {target}"
        return [
            Input(
                name="throughput", value=ASSUMED_THROUGHPUT, unit="B/s", measured=False, basis=why
            ),
            Input(name="conversion", value=ASSUMED_CONVERSION, unit="s", measured=False, basis=why),
            Input(name="overhead", value=ASSUMED_OVERHEAD, unit="s", measured=False, basis=why),
            Input(name="boot", value=ASSUMED_BOOT, unit="s", measured=False, basis=why),
            Input(name="final_delta", value=ASSUMED_FINAL_DELTA, unit="fraction", measured=False),
        ]
    throughput = sum(s.bytes for s in mine) / sum(s.copy_seconds for s in mine)
    conversion = statistics.median(s.conversion_seconds for s in mine)
    overhead = statistics.median(
        max(0.0, s.total_seconds - s.copy_seconds - s.conversion_seconds) for s in mine
    )
    boot = statistics.median(s.boot_seconds for s in mine)
    return [
        Input(name="throughput", value=throughput, unit="B/s", measured=True, basis=basis),
        Input(name="conversion", value=conversion, unit="s", measured=True, basis=basis),
        Input(name="overhead", value=overhead, unit="s", measured=True, basis=basis),
        Input(name="boot", value=boot, unit="s", measured=True, basis=basis),
        Input(
            name="final_delta",
            value=ASSUMED_FINAL_DELTA,
            unit="fraction",
            measured=False,
            basis="changed-block history is not kept yet",
        ),
    ]


def _vm(vm: str, name: str, size: int, given: dict[str, float]) -> VmEstimate:
    copy = size / given["throughput"]
    cold = given["overhead"] + copy + given["conversion"]
    final = size * given["final_delta"] / given["throughput"]
    return VmEstimate(
        vm=vm,
        name=name,
        bytes=size,
        cold_duration=cold,
        cold_downtime=cold,  # the source is powered off before the copy starts
        warm_duration=cold + final,
        warm_downtime=final + given["conversion"] + given["boot"],
    )


def makespan(durations: Iterable[float], slots: int) -> float:
    """The VMs started in queue order as slots free up, as the controller's scheduler does."""
    running: list[float] = []
    for took in durations:
        start = heapq.heappop(running) if len(running) >= slots else 0.0
        heapq.heappush(running, start + took)
    return max(running, default=0.0)


def estimate(
    plan: str,
    *,
    provider: str,
    hosts: Sequence[str],
    target: str,
    warm: bool,
    max_in_flight: int,
    vms: Sequence[tuple[str, str, int]],  # (id, name, bytes) in queue order
    history: Sequence[Sample],
    now: float,
) -> PlanEstimate:
    used = inputs(history, provider, target)
    given = {i.name: i.value for i in used}
    per_vm = [_vm(vm, name, size, given) for vm, name, size in vms]
    took = [v.warm_duration if warm else v.cold_duration for v in per_vm]
    cap = Input(
        name="concurrency", value=max_in_flight, unit="VMs", measured=False, basis="maxInFlight"
    )
    return PlanEstimate(
        plan=plan,
        warm=warm,
        source=", ".join(source_of(provider, h) for h in sorted(set(hosts))) or provider,
        target=target,
        vms=per_vm,
        duration=makespan(took, max_in_flight),
        inputs=[*used, cap],
        made=now_iso(now),
    )


def clock(seconds: float) -> str:
    """A duration as people read it: 1h02m, 4m31s, 12s."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


async def stored_states(bus: Bus) -> list[Stored]:
    """Every VM state in ``ferry-vms``: the history, and the sizes of VMs seen before."""
    store = bus.kv(Bucket.VMS, Stored)
    found = []
    for key in await store.keys():
        entry = await store.get(key)
        if entry is not None:
            found.append(entry.value)
    return found


async def for_plan(
    bus: Bus, plan: Plan, inventory: Sequence[Vm] = (), *, now: float
) -> PlanEstimate:
    """The plan's estimate from the stored states and, when given, the source's inventory."""
    return plan_estimate(plan, await stored_states(bus), inventory, now=now)


def plan_estimate(
    plan: Plan, states: Sequence[Stored | VmState], inventory: Sequence[Vm] = (), *, now: float
) -> PlanEstimate:
    """Sizes from the inventory given, else from a VM's last stored state, else unknown (0)."""
    seen = {key: s for s in sorted(states, key=lambda s: s.created) for key in (s.vm, s.name)}
    known = {key: v for v in inventory for key in (v.id, v.name)}
    vms, hosts = [], []
    for wanted in plan.spec.vms:
        inv, last = known.get(wanted.key), seen.get(wanted.key)
        if inv is not None:
            size = sum(d.allocated if d.allocated is not None else d.capacity for d in inv.disks)
            vms.append((inv.id, inv.name, size))
            hosts.append(inv.host)
        elif last is not None:
            vms.append((last.vm, last.name, last.total_bytes))
            hosts.append(last.host)
        else:
            vms.append((wanted.key, wanted.name or wanted.key, 0))
    return estimate(
        plan.name,
        provider=plan.spec.provider.source.name,
        hosts=[h for h in hosts if h],
        target=plan.spec.targetNamespace,
        warm=plan.spec.warm,
        max_in_flight=plan.spec.maxInFlight,
        vms=vms,
        history=[x for x in (sample(s) for s in states) if x is not None],
        now=now,
    )
