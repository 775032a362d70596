"""Failures: a failed step fails only its VM and restores power; transient ones are retried;
a plan that fails preflight never starts; a re-run runs only what did not succeed."""

from __future__ import annotations

from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack

from ferry.proto.inventory import ProviderType

OVA = ProviderType.OVA


async def test_permanent_failure_fails_only_that_vm_and_restores_power(stack: Stack) -> None:
    # Given two running VMs, and a conversion that fails for one of them
    src = stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await apply(stack.bus, documents("ova", ["id-a", "id-b"]))
    stack.services.script[("id-a", "ConvertGuest")] = "fail"
    stack.run_services()
    stack.run_controller()
    # When the migration runs
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    vms = await stack.vms("m1")
    # Then that VM failed at ConvertGuest with the service's reason, the other succeeded
    assert mig["status"]["phase"] == "Failed"
    a, b = vms["id-a"], vms["id-b"]
    assert a["status"] == "Failed" and b["status"] == "Succeeded"
    failed_step = next(s for s in a["steps"] if s["status"] == "Failed")
    assert failed_step["name"] == "ConvertGuest"
    assert "failed on purpose" in a["errors"][-1]["reason"]
    # And the failed VM's source was powered off, then on again; its volumes cleaned up
    assert [e for e in src.log() if e.endswith(":id-a")] == ["off:id-a", "on:id-a"]
    assert src.power()["id-a"] == "on" and a["power_restored"] is True
    assert src.power()["id-b"] == "off"
    await _eventually_cleaned(stack, "id-a")
    assert "id-b" not in stack.services.cleaned
    # And nothing after the failed step ran for it
    assert stack.services.runs("id-a") == ["CreateDataVolumes", "AllocateDisks", "ConvertGuest"]
    events = await stack.events("m1")
    types = [t for t, m in events if m.vm == "id-a"]
    assert "migration.vm_failed.v1" in types and "migration.power_restored.v1" in types


async def test_a_vm_failing_after_create_vm_leaves_no_volumes_and_no_virtual_machine(
    stack: Stack,
) -> None:
    # Given two VMs, one of which fails to power on after its VirtualMachine was created
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await apply(stack.bus, documents("ova", ["id-a", "id-b"]))
    stack.services.script[("id-a", "PowerOn")] = "fail"
    stack.run_services()
    stack.run_controller()
    # When the migration runs
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    # Then that VM failed at PowerOn, after its VirtualMachine was created
    assert mig["status"]["phase"] == "Failed"
    assert (await stack.vms("m1"))["id-a"]["status"] == "Failed"
    assert stack.services.runs("id-a")[-2:] == ["CreateVM", "PowerOn"]
    # And clean-up removed both its volumes and its VirtualMachine
    await _eventually_cleaned(stack, "id-a")
    await eventually(
        lambda: "id-a" not in stack.services.machines,
        timeout=20,
        what="the failed VM's VirtualMachine deleted",
    )
    # And the VM that migrated keeps its VirtualMachine and its volumes
    assert "id-b" in stack.services.machines and "id-b" not in stack.services.cleaned


async def test_transient_failure_is_retried(stack: Stack) -> None:
    # Given a copy that fails on its first attempt only
    stack.source("src", [make_vm("id-a", ProviderType.OVIRT)])
    await apply(stack.bus, documents("ovirt", ["id-a"]))
    stack.services.script[("id-a", "CopyDisks")] = "flaky"
    stack.run_services()
    stack.run_controller()
    # When the migration runs
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    # Then the VM succeeded on the second attempt of CopyDisks, and the retry is on record
    assert mig["status"]["phase"] == "Succeeded"
    a = (await stack.vms("m1"))["id-a"]
    copy = next(s for s in a["steps"] if s["name"] == "CopyDisks")
    assert copy["attempt"] == 2 and copy["status"] == "Completed"
    assert [(s, n) for _, s, n in stack.services.ran if s == "CopyDisks"][-1] == ("CopyDisks", 2)
    events = await stack.events("m1")
    retried = [m for t, m in events if t == "migration.step_failed.v1"]
    assert len(retried) == 1 and retried[0].will_retry


async def test_preflight_rejects_with_a_reason_per_vm(stack: Stack) -> None:
    # Given a plan with a missing VM, an unmapped network, and a bad explicit target name
    odd = make_vm("id-b", OVA)
    from ferry.proto.inventory import Nic

    odd = type(odd)(
        **{
            **{f: getattr(odd, f) for f in odd.__struct_fields__},
            "nics": [Nic(id="n", name="eth1", network="dmz")],
        }
    )
    stack.source("src", [make_vm("id-a", OVA), odd, make_vm("id-c", OVA)])
    plan_vms = {
        "vms": [
            {"id": "id-a"},
            {"id": "id-b"},
            {"id": "id-c", "targetName": "Bad_Name"},
            {"id": "id-x"},
        ]
    }
    await apply(stack.bus, documents("ova", [], extra_plan=plan_vms))
    stack.run_services()
    stack.run_controller()
    # When a migration is started
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    # Then it was rejected, each bad VM with its reason, and nothing ran
    assert mig["status"]["phase"] == "Rejected"
    reasons = mig["status"]["reasons"]
    assert set(reasons) == {"id-b", "id-c", "id-x"}
    assert "network 'dmz'" in reasons["id-b"][0]
    assert "DNS-1123" in reasons["id-c"][0]
    assert "not found" in reasons["id-x"][0]
    assert stack.services.ran == [] and await stack.vms("m1") == {}
    assert [t for t, _ in await stack.events("m1")] == ["migration.rejected.v1"]


async def test_unreachable_provider_is_rejected(stack: Stack) -> None:
    # Given a source that refuses connections
    src = stack.source("src", [make_vm("id-a", OVA)])
    (src.root / "down").touch()
    await apply(stack.bus, documents("ova", ["id-a"]))
    stack.run_controller()
    # When a migration is started
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    # Then it is rejected saying the provider is not reachable, and why
    assert mig["status"]["phase"] == "Rejected"
    assert "not reachable: connection refused" in mig["status"]["reasons"]["plan"][0]


async def test_rerun_runs_only_vms_that_did_not_succeed(stack: Stack) -> None:
    # Given a first migration where one of two VMs failed
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await apply(stack.bus, documents("ova", ["id-a", "id-b"]))
    stack.services.script[("id-a", "CreateVM")] = "fail"
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Failed"
    # When the cause is fixed and a new migration of the same plan runs
    del stack.services.script[("id-a", "CreateVM")]
    before = len(stack.services.ran)
    await stack.migrate("m2")
    mig = await stack.wait_end("m2")
    # Then only the failed VM ran again, and it succeeded
    assert mig["status"]["phase"] == "Succeeded"
    assert set(await stack.vms("m2")) == {"id-a"}
    assert {vm for vm, _, _ in stack.services.ran[before:]} == {"id-a"}
    started = next(m for t, m in await stack.events("m2") if t == "migration.started.v1")
    assert started.vms == ["a"] and started.skipped == ["b"]


async def _eventually_cleaned(stack: Stack, vm: str) -> None:
    from controller_harness import eventually

    await eventually(lambda: vm in stack.services.cleaned, timeout=20, what=f"{vm} cleaned")
