"""Each flow's itinerary runs in order against the real bus, with progress and status right."""

from __future__ import annotations

import pytest
from controller_harness import apply, documents, make_vm
from controller_stack import Stack

from ferry.proto.inventory import PowerState, ProviderType

CASES = {
    "ova-cold-local": (ProviderType.OVA, False, False),
    "ovirt-cold-local": (ProviderType.OVIRT, False, False),
    "vsphere-cold-remote": (ProviderType.VSPHERE, False, True),
    "vsphere-warm": (ProviderType.VSPHERE, True, False),
}
SERVICE_STEPS = {
    "ova-cold-local": ["CreateDataVolumes", "AllocateDisks", "ConvertGuest", "CreateVM", "PowerOn"],
    "ovirt-cold-local": ["CreateDataVolumes", "AllocateDisks", "CopyDisks", "CreateVM", "PowerOn"],
    "vsphere-cold-remote": [
        "CreateDataVolumes",
        "AllocateDisks",
        "CopyDisks",
        "ConvertGuest",
        "CreateVM",
        "PowerOn",
    ],
    "vsphere-warm": [
        "CreateDataVolumes",
        "AllocateDisks",
        "CopyDisks",
        "Finalize",
        "ConvertGuest",
        "CreateVM",
        "PowerOn",
    ],
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_flow_runs_in_order(stack: Stack, case: str) -> None:
    # Given a source with two running VMs and a plan of the given shape
    ptype, warm, remote = CASES[case]
    src = stack.source("src", [make_vm("id-a", ptype), make_vm("id-b", ptype, PowerState.OFF)])
    await apply(stack.bus, documents(ptype.value, ["id-a", "id-b"], warm=warm, remote=remote))
    stack.run_services()
    stack.run_controller()
    # When a migration of it starts (warm: with the cutover already due)
    await stack.migrate("m1", cutover="2020-01-01T00:00:00Z" if warm else None)
    mig = await stack.wait_end("m1")
    # Then it succeeded, and each VM ran its service steps once each, in order
    assert mig["status"]["phase"] == "Succeeded"
    want = SERVICE_STEPS[case]
    assert stack.services.runs("id-a") == want
    assert stack.services.runs("id-b") == [s for s in want if s != "PowerOn"]  # it was off
    vms = await stack.vms("m1")
    a = vms["id-a"]
    # And the stored state shows every step Completed with one attempt, and full progress
    assert a["status"] == "Succeeded" and a["phase"] == "Completed"
    assert all(s["status"] == "Completed" and s["attempt"] == 1 for s in a["steps"])
    assert [d["done"] for d in a["disks"]] == [d["total"] for d in a["disks"]]
    # And the audit trail has each step started and completed in itinerary order
    events = await stack.events("m1")
    started = [m.step for t, m in events if t == "migration.step_started.v1" and m.vm == "id-a"]
    assert started == [s["name"] for s in a["steps"]]
    assert [t for t, _ in events if t == "migration.completed.v1"] == ["migration.completed.v1"]
    # And the source that ran was powered off (cold and warm) and is left off after success
    assert "off:id-a" in src.log() and src.power()["id-a"] == "off"
    assert "off:id-b" not in src.log()


async def test_progress_events_carry_bytes_per_disk(stack: Stack) -> None:
    # Given an oVirt VM whose copy reports half of each disk before finishing
    stack.source("src", [make_vm("id-a", ProviderType.OVIRT)])
    await apply(stack.bus, documents("ovirt", ["id-a"]))
    stack.run_services()
    stack.run_controller()
    # When it migrates
    await stack.migrate("m1")
    await stack.wait_end("m1")
    # Then a Progress event showed half of each disk during CopyDisks
    events = await stack.events("m1")
    progress = [m for t, m in events if t == "migration.progress.v1"]
    assert progress, "no progress events"
    assert any(m.step == "CopyDisks" and m.disks.get("id-a-d1") == (4 << 20) // 2 for m in progress)
    assert all(m.total == 12 << 20 for m in progress)
