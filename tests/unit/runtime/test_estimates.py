"""Estimates: measured inputs from finished VMs of the same pair, stated defaults otherwise."""

from __future__ import annotations

import msgspec
import pytest

from ferry.proto.estimate import PlanEstimate
from ferry.proto.inventory import Disk, ProviderType, Vm
from ferry.proto.phases import Flow, Phase, StepStatus, VmStatus
from ferry.proto.state import DiskState, StepState, now_iso
from ferry.proto.volume import SourceRef
from ferry.runtime import estimates

GIB = 1 << 30
T0 = 1_800_000_000.0


def finished(
    provider: str = "lab",
    namespace: str = "demo",
    copy: float = 100.0,
    *,
    size: int = 2 * GIB,
    conversion: float = 40.0,
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
        disks=[DiskState(id="d", name="d", total=size, done=size)],
        steps=[step(Phase.COPY_DISKS, 10, copy), step(Phase.CONVERT_GUEST, 10 + copy, conversion),
               step(Phase.POWER_ON, 10 + copy + conversion, 10)],
        started=now_iso(T0), ended=now_iso(T0 + 20 + copy + conversion),
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
    # Then throughput, conversion (per GiB of the guest: one sample) and boot come from it
    assert by["throughput"].measured and by["throughput"].value == 2 * GIB / 100
    assert by["conversion"].value == 0 and by["conversion_per_gib"].value == 20
    assert by["boot"].value == 10
    vm = est.vms[0]  # 4 GiB: twice the bytes to copy and twice the guest to convert
    assert vm.cold_duration == 200 + 80 + (160 - 100 - 40)
    assert vm.cold_downtime == vm.cold_duration


def test_warm_downtime_is_final_delta_conversion_and_boot() -> None:
    sample = estimates.sample(finished())
    assert sample is not None
    vm = plan([sample], warm=True).vms[0]
    final = 4 * GIB * estimates.ASSUMED_FINAL_DELTA / (2 * GIB / 100)
    assert vm.warm_downtime == final + 80 + 10
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


def sizes(est: PlanEstimate, *gib: int) -> list[float]:
    """The cold durations of VMs of these sizes, less their copy: conversion plus overhead."""
    by = {i.name: i.value for i in est.inputs}
    return [estimates.conversion_of(g * GIB, by) for g in gib]


def test_conversion_time_scales_with_the_guests_size() -> None:
    # Given guests of 1 GiB and 3 GiB that converted in 30 s and 90 s on this pair
    history = [
        s
        for s in (estimates.sample(finished(size=g * GIB, conversion=30.0 * g)) for g in (1, 3))
        if s is not None
    ]
    # When estimating: two points are not a line, so seconds per GiB through the origin
    est = plan(history)
    by = {i.name: i for i in est.inputs}
    assert by["conversion_per_gib"].value == 30 and "seconds per GiB" in by["conversion"].basis
    # Then a 4 GiB guest converts in 120 s, not the 60 s median of the two
    assert sizes(est, 4) == [120.0]
    assert est.vms[0].cold_duration - est.vms[0].bytes / by["throughput"].value == pytest.approx(
        120 + by["overhead"].value
    )


def test_enough_sizes_fit_a_line_with_a_fixed_part() -> None:
    # Given conversions of 1, 2 and 4 GiB taking 40, 50 and 70 s: 30 s + 10 s/GiB
    history = [
        s
        for s in (
            estimates.sample(finished(size=g * GIB, conversion=30.0 + 10 * g)) for g in (1, 2, 4)
        )
        if s is not None
    ]
    # When estimating
    est = plan(history)
    by = {i.name: i for i in est.inputs}
    # Then the least-squares line is used and stated, and a 10 GiB guest takes 130 s
    assert by["conversion"].value == pytest.approx(30) and by["conversion"].measured
    assert by["conversion_per_gib"].value == pytest.approx(10)
    assert "least-squares fit over 3 sizes" in by["conversion"].basis
    assert sizes(est, 10) == [pytest.approx(130)]


def test_a_fit_never_makes_a_larger_guest_convert_faster() -> None:
    # Given noisy history where the larger guests happened to convert faster
    history = [
        s
        for s in (
            estimates.sample(finished(size=g * GIB, conversion=c))
            for g, c in ((1, 90.0), (2, 60.0), (4, 50.0))
        )
        if s is not None
    ]
    by = {i.name: i.value for i in plan(history).inputs}
    # Then the slope is held at zero: the mean conversion, whatever the size
    assert by["conversion_per_gib"] == 0
    assert by["conversion"] == pytest.approx((90 + 60 + 50) / 3)


def test_each_step_is_expected_to_take_its_share_of_the_estimate() -> None:
    # Given a cold estimate measured on the pair: 2 GiB copied in 100 s, converted in 40 s
    sample = estimates.sample(finished())
    assert sample is not None
    cold = plan([sample])
    by = {i.name: i.value for i in cold.inputs}
    web = cold.vms[0]  # 4 GiB
    # When each step's share is asked for
    shares = estimates.expected_steps(cold, web, Flow.POPULATOR)
    # Then the copy is the bytes at the throughput, the conversion is by size, boot is boot
    assert shares[Phase.COPY_DISKS] == pytest.approx(200)
    assert shares[Phase.CONVERT_GUEST] == pytest.approx(80)
    assert shares[Phase.POWER_ON] == by["boot"] == 10
    assert shares[Phase.CREATE_DATA_VOLUMES] == by["overhead"]
    assert Phase.PRE_HOOK not in shares  # a hook's time is the user's
    # And a full conversion, which writes the disks, is expected to copy and convert
    full = estimates.expected_steps(cold, web, Flow.CONVERSION)
    assert full[Phase.CONVERT_GUEST] == pytest.approx(280)
    # And a warm copy, which waits for the cutover, has no expectation; its final delta has
    warm = plan([sample], warm=True)
    shares = estimates.expected_steps(warm, warm.vms[0], Flow.POPULATOR)
    assert Phase.COPY_DISKS not in shares and Phase.COPYING_PAUSED not in shares
    assert shares[Phase.FINALIZE] == pytest.approx(200 * estimates.ASSUMED_FINAL_DELTA + 20)
    # And a VM of unknown size is never late on a copy it cannot be timed on
    unknown = estimates.expected_steps(cold, msgspec.structs.replace(web, bytes=0), Flow.POPULATOR)
    assert Phase.COPY_DISKS not in unknown and Phase.FINALIZE not in unknown


def test_accuracy_is_relative_to_what_happened_and_only_of_vms_that_succeeded() -> None:
    # Given a VM estimated at 4 GiB through an unmeasured pair, which took 160 s
    done = finished()  # 2 GiB, 160 s from start to end
    est = estimates.estimate(
        "p", provider="lab", hosts=["h1"], target="demo", warm=False, max_in_flight=1,
        vms=[("vm-1", "web", 2 * GIB)], history=[], now=T0,
    )  # fmt: skip
    planned = est.vms[0].cold_duration
    # When compared with what happened
    (got,) = estimates.accuracy(est, [done])
    # Then the error is (actual - estimated) / actual: "within ±30 % of the actual one"
    assert got.actual == 160 and got.estimated == planned
    assert got.error == pytest.approx((160 - planned) / 160)
    # And a VM that failed or was canceled, having stopped short, has no error to show
    for status in (VmStatus.FAILED, VmStatus.CANCELED):
        stopped = msgspec.structs.replace(done, status=status)
        assert estimates.accuracy(est, [stopped]) == []


def test_throughput_is_learned_per_allocated_byte_the_size_estimates_use() -> None:
    # Given a VM admitted with 512 MiB of data on a 2 GiB disk, whose volume (2 GiB) was
    # written in 100 s
    done = msgspec.structs.replace(
        finished(),
        inventory=Vm(
            id="vm-1", name="web", provider_type=ProviderType.OVA,
            disks=[Disk(id="d", name="d", capacity=2 * GIB, allocated=GIB // 2)],
        ),
    )  # fmt: skip
    sample = estimates.sample(done)
    assert sample is not None
    # Then the pair's throughput is the data's, not the volume's: an estimate sizes the
    # next VM by its allocated bytes, so the same guest again is estimated at the same copy
    assert sample.bytes == GIB // 2
    est = estimates.estimate(
        "p", provider="lab", hosts=["h1"], target="demo", warm=False, max_in_flight=1,
        vms=[("vm-2", "web2", GIB // 2)], history=[sample], now=T0,
    )  # fmt: skip
    assert est.vms[0].cold_duration == pytest.approx(160)  # what the first one took
