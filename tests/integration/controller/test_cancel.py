"""Cancel per VM or per migration, in every phase: the VM ends Canceled, the services are told
to stop, its volumes are cleaned, and the source power state comes back."""

from __future__ import annotations

import pytest
from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack

from ferry.proto import migration
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket

OVA = ProviderType.OVA
# The OVA cold flow's steps where a VM can be caught, who holds it there, and what cancel undoes.
PHASES = {
    "StorePowerState": ("source", "power-state", False, False),
    "PowerOffSource": ("source", "shutdown", True, False),
    "CreateDataVolumes": ("service", "", True, True),
    "AllocateDisks": ("service", "", True, True),
    "ConvertGuest": ("service", "", True, True),
    "CreateVM": ("service", "", True, True),
    "PowerOn": ("service", "", True, True),
}


@pytest.mark.parametrize("phase", list(PHASES))
async def test_cancel_one_vm_in_each_phase(stack: Stack, phase: str) -> None:
    # Given two running VMs; the first is held in the given phase
    holder, what, restores, cleans = PHASES[phase]
    src = stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await apply(stack.bus, documents("ova", ["id-a", "id-b"]))
    if holder == "source":
        (src.root / f"hold-{what}-id-a").touch()
        held = lambda: (src.root / f"holding-{what}-id-a").exists()  # noqa: E731
    else:
        stack.services.script[("id-a", phase)] = "hold"
        held = lambda: ("id-a", phase) in stack.services.holding  # noqa: E731
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(held, what=f"id-a held in {phase}")
    # When that VM is canceled (twice: cancel is idempotent)
    for _ in range(2):
        await stack.bus.publish(
            migration.CancelMigration(plan="plan1", migration="m1", vm="a", reason="by test")
        )
    if holder == "source":
        (src.root / f"hold-{what}-id-a").unlink()
    mig = await stack.wait_end("m1")
    # Then it ended Canceled in that phase, the other VM succeeded
    vms = await stack.vms("m1")
    a = vms["id-a"]
    assert a["status"] == "Canceled" and vms["id-b"]["status"] == "Succeeded"
    assert mig["status"]["phase"] == "Canceled"
    assert next(s for s in a["steps"] if s["status"] == "Canceled")["name"] == phase
    # And every service was told (the cancel key), running work stopped
    assert await stack.bus.kv(Bucket.CANCEL, dict).get("m1.id-a") is not None
    await eventually(lambda: not stack.services.holding, what="held handler stopped")
    # And volumes were cleaned once created, and the source power state is as before
    if cleans:
        await eventually(lambda: "id-a" in stack.services.cleaned, what="cleanup")
    else:
        assert "id-a" not in stack.services.cleaned
    if phase == "PowerOn":  # its VirtualMachine exists: clean-up deletes it despite the cancel
        await eventually(
            lambda: "id-a" not in stack.services.machines, timeout=20, what="VM deleted"
        )
    assert src.power()["id-a"] == "on"
    assert ("on:id-a" in src.log()) == restores
    # And nothing ran for it after the cancel
    ran = stack.services.runs("id-a")
    assert not ran or ran[-1] == phase or (holder == "source" and ran == [])
    events = [t for t, m in await stack.events("m1") if m.vm == "id-a"]
    assert events.count("migration.vm_canceled.v1") == 1


async def test_cancel_whole_migration_including_queued_vms(stack: Stack) -> None:
    # Given three VMs, one slot (maxInFlight 1), the first held in CopyDisks… ConvertGuest
    ids = ["id-0", "id-1", "id-2"]
    stack.source("src", [make_vm(i, OVA) for i in ids])
    await apply(stack.bus, documents("ova", ids, max_in_flight=1))
    stack.services.script[("id-0", "ConvertGuest")] = "hold"
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(lambda: ("id-0", "ConvertGuest") in stack.services.holding, what="id-0 held")
    # When the whole migration is canceled
    await stack.bus.publish(migration.CancelMigration(plan="plan1", migration="m1", vm="*"))
    mig = await stack.wait_end("m1")
    # Then every VM ended Canceled, the queued ones without ever starting
    vms = await stack.vms("m1")
    assert mig["status"]["phase"] == "Canceled"
    assert {v["status"] for v in vms.values()} == {"Canceled"}
    assert vms["id-1"]["started"] == "" and vms["id-2"]["started"] == ""
    assert {vm for vm, _, _ in stack.services.ran} == {"id-0"}
    assert await stack.bus.kv(Bucket.CANCEL, dict).get("m1._all") is not None
    await eventually(
        lambda: stack.services.cleaned == ["id-0"], what="only id-0 had volumes to clean"
    )


async def test_a_second_migration_of_a_running_vm_is_rejected(stack: Stack) -> None:
    # Given a plan's VM held in ConvertGuest by its first migration
    stack.source("src", [make_vm("id-a", OVA)])
    await apply(stack.bus, documents("ova", ["id-a"]))
    stack.services.script[("id-a", "ConvertGuest")] = "hold"
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(lambda: ("id-a", "ConvertGuest") in stack.services.holding, what="held")
    # When the plan is migrated again before the first one ended (`ferry migrate` twice)
    await stack.migrate("m2")
    second = await stack.wait_end("m2")
    # Then the second is rejected, naming the migration that has the VM; the first runs on
    assert second["status"]["phase"] == "Rejected"
    reasons = [r for rs in second["status"]["reasons"].values() for r in rs]
    assert any("being migrated by migration m1" in r for r in reasons), reasons
    assert await stack.vms("m2") == {}
    assert (await stack.migration("m1"))["status"]["phase"] == "Running"
    # (the held step let go: a router stopping with it in flight waits out its drain grace)
    stack.services.released.add(("id-a", "ConvertGuest"))
