"""At most maxInFlight VMs per plan and maxInFlightPerHost per source host run at once;
the next starts as soon as one finishes."""

from __future__ import annotations

from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack

from ferry.proto.inventory import ProviderType


async def _statuses(stack: Stack) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in (await stack.vms("m1")).values():
        counts[state["status"]] = counts.get(state["status"], 0) + 1
    return counts


async def test_max_in_flight_per_plan(stack: Stack) -> None:
    # Given five VMs whose volumes are held, and a plan with maxInFlight 2
    ids = [f"id-{i}" for i in range(5)]
    stack.source("src", [make_vm(i, ProviderType.OVA, host=f"h{i}") for i in ids])
    await apply(stack.bus, documents("ova", ids, max_in_flight=2))
    for i in ids:
        stack.services.script[(i, "CreateDataVolumes")] = "hold"
    stack.run_services()
    stack.run_controller()
    # When the migration starts
    await stack.migrate("m1")
    # Then two VMs run and three wait
    await eventually(lambda: len(stack.services.holding) == 2, what="two VMs holding")
    assert await _statuses(stack) == {"Running": 2, "Queued": 3}
    # And when one finishes, exactly one more starts
    first = sorted(stack.services.holding)[0]
    stack.services.released.add(first)

    def third_started() -> bool:
        began = {vm for vm, step, _ in stack.services.ran if step == "CreateDataVolumes"}
        return len(began) == 3 and len(stack.services.holding) == 2

    await eventually(third_started, what="a third VM started, two holding")
    assert await _statuses(stack) == {"Succeeded": 1, "Running": 2, "Queued": 2}
    # And releasing everything completes the migration
    stack.services.released.update((i, "CreateDataVolumes") for i in ids)
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"


async def test_per_source_host_cap(stack: Stack) -> None:
    # Given three VMs on one host and one on another, a per-host cap of 1
    ids = ["id-0", "id-1", "id-2", "id-3"]
    hosts = {"id-0": "esx1", "id-1": "esx1", "id-2": "esx1", "id-3": "esx2"}
    stack.source("src", [make_vm(i, ProviderType.OVA, host=hosts[i]) for i in ids])
    await apply(stack.bus, documents("ova", ids, max_in_flight=10, per_host=1))
    for i in ids:
        stack.services.script[(i, "CreateDataVolumes")] = "hold"
    stack.run_services()
    stack.run_controller()
    # When the migration starts
    await stack.migrate("m1")
    # Then one VM per host runs
    await eventually(lambda: len(stack.services.holding) == 2, what="one VM per host")
    assert {hosts[vm] for vm, _ in stack.services.holding} == {"esx1", "esx2"}
    assert await _statuses(stack) == {"Running": 2, "Queued": 2}
    # And all complete once released
    stack.services.released.update((i, "CreateDataVolumes") for i in ids)
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
