"""Budgets are shared by every plan: two plans on one source host together never have
more VMs in flight there than the host's Budget allows, and a waiting VM's plan says
which budget holds it."""

from __future__ import annotations

import asyncio
import time

from controller_harness import _doc, apply, documents, eventually, make_vm
from controller_stack import Stack
from test_cli import ferry

from ferry.bus.rate import SharedRate, account
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket
from ferry.proto.volume import Bandwidth

HOST_CAP = 3


async def test_two_plans_share_a_host_budget(stack: Stack) -> None:
    # Given eight VMs on one host split over two plans, each plan allowing 10 at once,
    # and a Budget of 3 VMs in flight on that host
    first, second = [f"id-{i}" for i in range(4)], [f"id-{i}" for i in range(4, 8)]
    stack.source("src", [make_vm(i, ProviderType.OVA, host="esx1") for i in first + second])
    await apply(stack.bus, documents("ova", first, plan="plan1", max_in_flight=10))
    await apply(stack.bus, documents("ova", second, plan="plan2", max_in_flight=10))
    budget = {"scope": "host", "names": ["esx1"], "maxVms": HOST_CAP}
    await apply(stack.bus, [_doc("Budget", "esx1-cap", budget)])
    for i in first + second:
        stack.services.script[(i, "CreateDataVolumes")] = "hold"
    stack.run_services()
    stack.run_controller()
    peak = 0

    async def sample() -> None:
        nonlocal peak
        while True:
            peak = max(peak, len(stack.services.holding))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    # When both migrations start
    await stack.migrate("m1", plan="plan1")
    await stack.migrate("m2", plan="plan2")
    # Then three VMs run on the host, from both plans, and the rest wait
    await eventually(lambda: len(stack.services.holding) == HOST_CAP, what="the host full")
    await asyncio.sleep(0.5)
    holding = {vm for vm, _ in stack.services.holding}
    assert len(holding) == HOST_CAP
    assert holding & set(first) and holding & set(second), "both plans get a share"
    # And each plan says the host's budget holds its waiting VMs
    objects = stack.bus.kv(Bucket.OBJECTS, dict)

    async def told() -> bool:
        entry = await objects.get("plan.plan1")
        return entry is not None and bool(entry.value.get("status", {}).get("waiting"))

    await eventually(told, what="plan1's waiting VMs reported")
    entry = await objects.get("plan.plan1")
    assert entry is not None
    reasons = set(entry.value["status"]["waiting"].values())
    assert reasons == {f"Budget esx1-cap (host esx1): {HOST_CAP}/{HOST_CAP} VMs in flight"}
    described = (await ferry(stack, "describe", "plan", "plan1")).output
    assert "Budget esx1-cap: host esx1: 3 VMs" in described
    assert f"{len(first) - len(holding & set(first))} VMs waiting" in described
    assert "esx1-cap (host esx1): 3/3 VMs in flight" in described
    # And as VMs are released one at a time, the host never runs more than its budget
    for _ in range(len(first + second)):
        await eventually(lambda: bool(stack.services.holding), what="a VM holding")
        stack.services.released.add(sorted(stack.services.holding)[0])
        await asyncio.sleep(0.1)
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    assert (await stack.wait_end("m2"))["status"]["phase"] == "Succeeded"
    sampler.cancel()
    assert peak == HOST_CAP


async def test_higher_priority_plan_goes_first(stack: Stack) -> None:
    # Given two plans on one host with a budget of 1, the second with a higher priority
    low, high = ["id-0", "id-1"], ["id-2", "id-3"]
    stack.source("src", [make_vm(i, ProviderType.OVA, host="esx1") for i in low + high])
    await apply(stack.bus, documents("ova", low, plan="low"))
    await apply(stack.bus, documents("ova", high, plan="high", extra_plan={"priority": 10}))
    await apply(stack.bus, [_doc("Budget", "one", {"scope": "global", "maxVms": 1})])
    for i in low + high:
        stack.services.script[(i, "CreateDataVolumes")] = "hold"
    stack.run_services()
    # When both are queued before the controller runs
    await stack.migrate("m1", plan="low")
    await stack.migrate("m2", plan="high")
    stack.run_controller()
    # Then, after the VM that got the budget first (whichever plan was admitted first),
    # both high-priority VMs start before the low plan's last one
    order: list[str] = []
    for _ in range(4):
        await eventually(
            lambda: (
                len(stack.services.holding) == 1
                and sorted(stack.services.holding)[0][0] not in order
            ),
            what="the next VM",
        )
        vm = sorted(stack.services.holding)[0]
        order.append(vm[0])
        stack.services.released.add(vm)
    assert order[-1] in low, order
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    assert (await stack.wait_end("m2"))["status"]["phase"] == "Succeeded"


async def test_each_copy_carries_the_bandwidth_budgets_its_vm_touches(stack: Stack) -> None:
    # Given oVirt VMs (copied by the volume-service) of two plans on esx1 and one on
    # esx2, a per-host bandwidth budget (each host its own 40 MiB/s) and a global 100 MiB/s
    stack.source(
        "src",
        [make_vm(i, ProviderType.OVIRT, host="esx1") for i in ("id-0", "id-1")]
        + [make_vm("id-2", ProviderType.OVIRT, host="esx2")],
    )
    await apply(stack.bus, documents("ovirt", ["id-0", "id-2"], plan="plan1"))
    await apply(stack.bus, documents("ovirt", ["id-1"], plan="plan2"))
    await apply(
        stack.bus,
        [
            _doc("Budget", "per-host", {"scope": "host", "bandwidthMiBps": 40}),
            _doc("Budget", "all", {"scope": "global", "bandwidthMiBps": 100}),
        ],
    )
    stack.run_services()
    stack.run_controller()
    # When both plans migrate
    await stack.migrate("m1", plan="plan1")
    await stack.migrate("m2", plan="plan2")
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    assert (await stack.wait_end("m2"))["status"]["phase"] == "Succeeded"
    # Then the copies on esx1, whatever their plan, share esx1's account; esx2's its own
    mib = 1 << 20

    def bw(budget: str, value: str, rate: int) -> Bandwidth:
        return Bandwidth(budget=budget, account=account(budget, value), bytes_per_second=rate * mib)

    everywhere = bw("all", "", 100)
    by_vm = {vm: set(b) for vm, b in stack.services.bandwidth.items()}
    assert by_vm["id-0"] == by_vm["id-1"] == {bw("per-host", "esx1", 40), everywhere}
    assert by_vm["id-2"] == {bw("per-host", "esx2", 40), everywhere}
    # And describe says what the movers move under each host's account now
    host = SharedRate(stack.bus, account("per-host", "esx1"), 40 * mib)
    first = await host.take(2 * mib)
    await asyncio.sleep(max(0.0, first + 1.0 - time.time()))
    await host.take(3 * mib)  # the next window: the one before it is the measure
    described = (await ferry(stack, "describe", "plan", "plan1")).output
    assert "Budget per-host: host each: 40 MiB/s; moving 2.0 MiB/s (esx1 2.0)" in described
