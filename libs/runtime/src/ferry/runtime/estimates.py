"""Duration and downtime of a plan before it runs, from what past migrations measured.

History is what the controller already stores: every finished VM's state in
``ferry-vms`` carries the inventory it was admitted with (its disks' allocated
bytes, the size every estimate uses) and each step's start and end. A VM that
succeeded is one sample for its source/target pair (source provider and host,
target namespace): copy throughput (bytes over the seconds of the step that
wrote the disks), conversion time against the guest's size (seconds per GiB, or a
least-squares line once the pair has converted guests of several sizes), and the
rest of its steps as overhead. No
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
from ferry.proto.estimate import ANNOTATION, Accuracy, Input, PlanEstimate, VmEstimate
from ferry.proto.inventory import WARM_SOURCES, Vm
from ferry.proto.objects import Migration, Plan, Provider
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
FIT_POINTS = 3  # samples of at least two sizes before conversion time is fitted to size
GIB = float(1 << 30)

_WRITES_DISKS = {Phase.COPY_DISKS, Phase.FINALIZE}
_BOOT = {Phase.CREATE_VM, Phase.POWER_ON}


class Stored(VmView, kw_only=True):
    """A stored VM state read for its measurements: the view plus its provider and the
    inventory it was admitted with (its disks' allocated bytes)."""

    provider: SourceRef | None = None
    inventory: Vm | None = None


def allocated(vm: Vm) -> int:
    """The bytes an estimate sizes a VM by: each disk's data, else its capacity."""
    return sum(d.allocated if d.allocated is not None else d.capacity for d in vm.disks)


def size_of(state: Stored | VmState) -> int:
    """A stored VM's size as its estimate measured it (the inventory's allocated bytes),
    so that a throughput learned from it applies to the next estimate's sizes; the
    volumes' bytes when the state holds no inventory."""
    if state.inventory is not None and state.inventory.disks:
        return allocated(state.inventory) or state.total_bytes
    return state.total_bytes


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
    size = size_of(state)
    if state.status is not VmStatus.SUCCEEDED or state.provider is None or not size:
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
        bytes=size,
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


def conversion_by_size(mine: Sequence[Sample]) -> tuple[float, float, str]:
    """Conversion time as ``fixed + per_gib * GiB`` of the guest's allocated bytes.

    With enough samples of different sizes, a least-squares line (both terms kept at
    zero or more: a conversion never takes less for a larger guest); with fewer, the
    pair's seconds per GiB through the origin."""
    points = [(s.bytes / GIB, s.conversion_seconds) for s in mine]
    sizes = {x for x, _ in points}
    total = sum(x for x, _ in points)
    if len(points) >= FIT_POINTS and len(sizes) >= 2:
        mean_x = statistics.fmean(x for x, _ in points)
        mean_y = statistics.fmean(y for _, y in points)
        spread = sum((x - mean_x) ** 2 for x, _ in points)
        slope = max(0.0, sum((x - mean_x) * (y - mean_y) for x, y in points) / spread)
        fixed = max(0.0, mean_y - slope * mean_x)
        return fixed, slope, f"least-squares fit over {len(points)} sizes"
    if total <= 0:
        return statistics.median(y for _, y in points), 0.0, "median"
    return 0.0, sum(y for _, y in points) / total, "seconds per GiB"


def no_history_on(provider: str, target: str) -> str:
    return f"no finished migration on {provider} -> {target}"


def has_history(samples: Sequence[Sample], provider: str, target: str) -> bool:
    """Whether the pair has a finished VM to learn from (else a probe is worth a read)."""
    return bool(_pick(samples, provider, target)[0])


def inputs(
    samples: Sequence[Sample], provider: str, target: str, probed: Input | None = None
) -> list[Input]:
    """The inputs of a pair: from its history, else the defaults (the throughput, when
    ``probed`` is given, from a short read of the source: see :mod:`ferry.runtime.probe`)."""
    mine, basis = _pick(samples, provider, target)
    if not mine:
        why = no_history_on(provider, target)
        return [
            probed
            or Input(
                name="throughput", value=ASSUMED_THROUGHPUT, unit="B/s", measured=False, basis=why
            ),
            Input(name="conversion", value=ASSUMED_CONVERSION, unit="s", measured=False, basis=why),
            Input(name="conversion_per_gib", value=0.0, unit="s/GiB", measured=False, basis=why),
            Input(name="overhead", value=ASSUMED_OVERHEAD, unit="s", measured=False, basis=why),
            Input(name="boot", value=ASSUMED_BOOT, unit="s", measured=False, basis=why),
            Input(name="final_delta", value=ASSUMED_FINAL_DELTA, unit="fraction", measured=False),
        ]
    throughput = sum(s.bytes for s in mine) / sum(s.copy_seconds for s in mine)
    fixed, per_gib, how = conversion_by_size(mine)
    overhead = statistics.median(
        max(0.0, s.total_seconds - s.copy_seconds - s.conversion_seconds) for s in mine
    )
    boot = statistics.median(s.boot_seconds for s in mine)
    return [
        Input(name="throughput", value=throughput, unit="B/s", measured=True, basis=basis),
        Input(name="conversion", value=fixed, unit="s", measured=True, basis=f"{how}; {basis}"),
        Input(
            name="conversion_per_gib",
            value=per_gib,
            unit="s/GiB",
            measured=True,
            basis=f"{how}; {basis}",
        ),
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


def conversion_of(size: int, given: dict[str, float]) -> float:
    """A guest's conversion time by its size; an unknown size (0) takes the fixed part, or
    a GiB's worth when the time is all per GiB."""
    per_gib = given.get("conversion_per_gib", 0.0)
    if size <= 0 and not given["conversion"]:
        return per_gib
    return given["conversion"] + per_gib * size / GIB


def _vm(vm: str, name: str, size: int, given: dict[str, float]) -> VmEstimate:
    copy = size / given["throughput"]
    conversion = conversion_of(size, given)
    cold = given["overhead"] + copy + conversion
    final = size * given["final_delta"] / given["throughput"]
    return VmEstimate(
        vm=vm,
        name=name,
        bytes=size,
        cold_duration=cold,
        cold_downtime=cold,  # the source is powered off before the copy starts
        warm_duration=cold + final,
        warm_downtime=final + conversion + given["boot"],
    )


# Steps whose time is the user's (hooks) or waits for the cutover they set (warm copy).
_UNTIMED = {Phase.STARTED, Phase.COMPLETED, Phase.PRE_HOOK, Phase.POST_HOOK}
_WAITS_FOR_CUTOVER = {Phase.COPY_DISKS, Phase.COPYING_PAUSED}


def expected_steps(est: PlanEstimate, guess: VmEstimate, flow: Flow) -> dict[str, float]:
    """The estimate's share of each step of a VM: what a step may take before it is late.

    The copy steps take the VM's bytes at the estimate's throughput (a full conversion
    writes the disks, so its copy time is ConvertGuest's), ConvertGuest the guest's
    conversion time by size, CreateVM and PowerOn the boot, and any other step at most
    the whole overhead. Warm, Finalize is the final delta plus the
    overhead. Hooks are the user's and a warm copy waits for the cutover: no
    expectation. A VM of unknown size has none for its copy."""
    given = {i.name: i.value for i in est.inputs}
    if not given.get("throughput") or "overhead" not in given or "conversion" not in given:
        return {}  # recorded before its inputs were kept, or by another version
    size = guess.bytes
    copy = size / given["throughput"]
    conversion = conversion_of(size, given)
    shares = {str(step): given["overhead"] for step in Phase if step not in _UNTIMED}
    shares[Phase.CREATE_VM] = shares[Phase.POWER_ON] = given.get("boot", given["overhead"])
    shares[Phase.COPY_DISKS] = copy
    shares[Phase.CONVERT_GUEST] = conversion + (copy if flow is Flow.CONVERSION else 0.0)
    if est.warm:  # the final delta, plus the snapshot work counted in the overhead
        delta = size * given.get("final_delta", ASSUMED_FINAL_DELTA) / given["throughput"]
        shares[Phase.FINALIZE] = delta + given["overhead"]
        for step in _WAITS_FOR_CUTOVER:
            shares.pop(step, None)
    else:
        shares[Phase.FINALIZE] = copy
    if size <= 0:
        for step in (Phase.COPY_DISKS, Phase.FINALIZE):
            shares.pop(step, None)
        if flow is Flow.CONVERSION:
            shares.pop(Phase.CONVERT_GUEST, None)
    return shares


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
    probed: Input | None = None,
) -> PlanEstimate:
    used = inputs(history, provider, target, probed)
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


WARM_ONLY_INPUTS = frozenset({"final_delta"})  # what only a warm migration's figures use


def cold_only(provider: Provider | None) -> str:
    """Why the source cannot migrate warm ("" when it can, or is not known): its estimate
    then shows the cold figures only."""
    if provider is None or provider.spec.type in WARM_SOURCES:
        return ""
    kind = provider.spec.type.value
    return f"{kind.upper() if kind == 'ova' else kind} sources cannot run warm"


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
    plan: Plan,
    states: Sequence[Stored | VmState],
    inventory: Sequence[Vm] = (),
    *,
    now: float,
    learned: Sequence[Sample] = (),
    probed: Input | None = None,
) -> PlanEstimate:
    """Sizes from the inventory given, else from a VM's last stored state, else unknown (0).

    History is the samples of ``states`` plus ``learned``: what a caller kept of VMs
    it no longer holds (the controller forgets ended VMs to bound its memory). ``probed``
    is the throughput a short read of the source measured, used when there is no history."""
    seen = {key: s for s in sorted(states, key=lambda s: s.created) for key in (s.vm, s.name)}
    known = {key: v for v in inventory for key in (v.id, v.name)}
    vms, hosts = [], []
    for wanted in plan.spec.vms:
        inv, last = known.get(wanted.key), seen.get(wanted.key)
        if inv is not None:
            vms.append((inv.id, inv.name, allocated(inv)))
            hosts.append(inv.host)
        elif last is not None:
            vms.append((last.vm, last.name, size_of(last)))
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
        history=samples_of(states, learned),
        now=now,
        probed=probed,
    )


def samples_of(states: Sequence[Stored | VmState], learned: Sequence[Sample] = ()) -> list[Sample]:
    return [*learned, *(x for x in (sample(s) for s in states) if x is not None)]


def encode(est: PlanEstimate) -> str:
    """The estimate as the Migration's ``status.estimate`` holds it."""
    return msgspec.json.encode(est).decode()


def recorded(mig: Migration) -> PlanEstimate | None:
    """The estimate made when the Migration was admitted (or, from before the controller
    recorded it, the one ``ferry migrate`` annotated); None when there is none."""
    text = mig.status.estimate or mig.metadata.annotations.get(ANNOTATION, "")
    if not text:
        return None
    try:
        return msgspec.json.decode(text, type=PlanEstimate)
    except msgspec.DecodeError:
        return None


def accuracy(est: PlanEstimate, states: Sequence[VmView]) -> list[Accuracy]:
    """Each VM that succeeded: its duration against the estimate in the plan's mode. A
    failed or canceled VM stopped short of what was estimated: no error to learn from."""
    found = []
    for s in states:
        guess = est.vm(s.vm)
        if guess is None or not (s.status is VmStatus.SUCCEEDED and s.started and s.ended):
            continue
        planned = guess.warm_duration if est.warm else guess.cold_duration
        actual = parse_iso(s.ended) - parse_iso(s.started)
        found.append(Accuracy(vm=s.name, estimated=planned, actual=actual))
    return found
