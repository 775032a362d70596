"""Estimates: measured inputs from finished VMs of the same pair, stated defaults otherwise."""

from __future__ import annotations

from ferry.proto.estimate import PlanEstimate
from ferry.proto.phases import Flow, Phase, StepStatus, VmStatus
from ferry.proto.state import DiskState, StepState, now_iso
from ferry.proto.volume import SourceRef
from ferry.runtime import estimates

GIB = 1 << 30
T0 = 1_800_000_000.0


def finished(
    provider: str = "lab", namespace: str = "demo", copy: float = 100.0
) -> estimates.Stored:
    def step(name: Phase, start: float, took: float) -> StepState:
        return StepState(
            name=name, service="x", status=StepStatus.COMPLETED,
            started=now_iso(T0 + start), ended=now_iso(T0 + start + took),
        )  # fmt: skip

    return estimates.Stored(
        plan="p", migration="m", vm="vm-1", name="web", target_name="web", namespace=namespace,
        host="h1", flow=Flow.POPULATOR, status=VmStatus.SUCCEEDED,
        provider=SourceRef(provider=provider, type="ova"),  # type: ignore[arg-type]
        disks=[DiskState(id="d", name="d", total=2 * GIB, done=2 * GIB)],
        steps=[step(Phase.COPY_DISKS, 10, copy), step(Phase.CONVERT_GUEST, 10 + copy, 40),
               step(Phase.POWER_ON, 50 + copy, 10)],
        started=now_iso(T0), ended=now_iso(T0 + 60 + copy),
    )  # fmt: skip


def plan(history: list[estimates.Sample], *, warm: bool = False, cap: int = 20) -> PlanEstimate:
    return estimates.estimate(
        "p", provider="lab", hosts=["h1"], target="demo", warm=warm, max_in_flight=cap,
        vms=[("vm-1", "web", 4 * GIB), ("vm-2", "db", 4 * GIB)], history=history, now=T0,
    )  # fmt: skip


def test_without_history_every_input_is_stated_as_assumed() -> None:
    # Given no finished migration / When estimating
    est = plan([])
    # Then the estimate is made from stated defaults, each marked assumed with its reason
    assert all(not i.measured for i in est.inputs)
    by = {i.name: i for i in est.inputs}
    assert by["throughput"].value == estimates.ASSUMED_THROUGHPUT
    assert "no finished migration on lab -> demo" in by["throughput"].basis
    vm = est.vms[0]
    assert vm.cold_duration == 4 * GIB / estimates.ASSUMED_THROUGHPUT + 180 + 60


def test_history_of_the_pair_is_measured_and_cold_downtime_is_the_whole_run() -> None:
    # Given one VM of 2 GiB copied in 100 s on this pair
    sample = estimates.sample(finished())
    assert sample is not None
    # When estimating a cold plan
    est = plan([sample])
    by = {i.name: i for i in est.inputs}
    # Then throughput, conversion and boot come from it, marked measured
    assert by["throughput"].measured and by["throughput"].value == 2 * GIB / 100
    assert by["conversion"].value == 40 and by["boot"].value == 10
    vm = est.vms[0]
    assert vm.cold_duration == 200 + 40 + (160 - 100 - 40)
    assert vm.cold_downtime == vm.cold_duration


def test_warm_downtime_is_final_delta_conversion_and_boot() -> None:
    sample = estimates.sample(finished())
    assert sample is not None
    vm = plan([sample], warm=True).vms[0]
    final = 4 * GIB * estimates.ASSUMED_FINAL_DELTA / (2 * GIB / 100)
    assert vm.warm_downtime == final + 40 + 10
    assert vm.warm_downtime < vm.warm_duration


def test_another_pairs_history_is_not_used() -> None:
    sample = estimates.sample(finished(namespace="elsewhere"))
    assert sample is not None
    assert not any(i.measured for i in plan([sample]).inputs)


def test_failed_vms_teach_nothing() -> None:
    state = finished()
    state.status = VmStatus.FAILED
    assert estimates.sample(state) is None


def test_the_plan_runs_under_its_concurrency_cap() -> None:
    one, two = plan([], cap=1), plan([], cap=2)
    per_vm = one.vms[0].cold_duration
    assert one.duration == 2 * per_vm
    assert two.duration == per_vm
