"""Warm migration's precopy loop until the cutover, and pre/post hooks run as child processes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack

from ferry.proto import migration
from ferry.proto.inventory import ProviderType


async def test_warm_precopies_until_cutover(stack: Stack) -> None:
    # Given a warm vSphere plan that copies again every second, and no cutover yet
    src = stack.source("src", [make_vm("id-a", ProviderType.VSPHERE)])
    docs = documents("vsphere", ["id-a"], warm=True, extra_plan={"precopyIntervalSeconds": 1})
    await apply(stack.bus, docs)
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")

    # When at least three precopies ran while the source kept running
    def copies() -> list[str]:
        return [s for s in stack.services.runs("id-a") if s.startswith("CopyDisks")]

    await eventually(lambda: len(copies()) >= 3, what="three precopies")
    assert src.power()["id-a"] == "on"
    # And the cutover is set to now
    now = datetime.now(UTC).isoformat()
    await stack.bus.publish(migration.Cutover(plan="plan1", migration="m1", vm="*", cutover=now))
    mig = await stack.wait_end("m1")
    # Then the source was powered off only then, the final delta copied, the VM converted
    assert mig["status"]["phase"] == "Succeeded"
    ran = stack.services.runs("id-a")
    rounds = len(copies())
    # (each round's command is named apart — CopyDisks, CopyDisks@1, … — so none is deduplicated)
    assert ran[2 : 2 + rounds] == ["CopyDisks"] + [f"CopyDisks@{i}" for i in range(1, rounds)]
    assert ran[:2] == ["CreateDataVolumes", "AllocateDisks"]
    assert ran[2 + rounds :] == ["Finalize", "ConvertGuest", "CreateVM", "PowerOn"]
    assert src.log() == ["off:id-a"]
    state = (await stack.vms("m1"))["id-a"]
    assert state["precopy"] == rounds - 1
    paused = next(s for s in state["steps"] if s["name"] == "CopyingPaused")
    assert paused["runs"] == rounds
    # And every round counted changes from the checkpoint the previous one returned
    since = dict(stack.services.since)
    assert since["CopyDisks"] == ""
    assert [since[f"CopyDisks@{i}"] for i in range(1, rounds)] == [
        f"cp-{i}" for i in range(rounds - 1)
    ]
    assert since["Finalize"] == f"cp-{rounds - 1}"
    # And ``ferry describe`` can show each round, the last one after the power-off
    assert [(r["precopy"], r["final"], r["changed"]) for r in state["rounds"]] == [
        *[(i, False, 7) for i in range(rounds)],
        (rounds - 1, True, 7),
    ]
    assert state["checkpoint"] == ""


async def test_a_warm_vm_canceled_between_precopies_leaves_no_checkpoint(stack: Stack) -> None:
    # Given a warm VM in its precopy loop with checkpoints at the source
    src = stack.source("src", [make_vm("id-a", ProviderType.LIBVIRT)])
    src.seed_checkpoints("id-a", ["ferry-1", "ferry-2"])
    await apply(stack.bus, documents("libvirt", ["id-a"], warm=True))
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(lambda: "CopyDisks" in stack.services.runs("id-a"), what="first round")
    # When it is canceled
    await stack.bus.publish(
        migration.CancelMigration(plan="plan1", migration="m1", vm="a", reason="by test")
    )
    await stack.wait_end("m1")
    # Then the source keeps running and no checkpoint of Ferry's is left on it
    assert src.power()["id-a"] == "on"
    await eventually(lambda: not src.checkpoint_names("id-a"), what="checkpoints removed")


async def test_pre_and_post_hooks_run_with_the_vm_in_their_environment(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a plan whose VM has a pre and a post hook writing to a file
    out = tmp_path / "hooks.log"
    stack.source("src", [make_vm("id-a", ProviderType.OVIRT)])
    docs = documents("ovirt", [])
    docs[4]["spec"]["vms"] = [
        {"id": "id-a", "hooks": [{"hook": {"name": "pre"}, "step": "PreHook"},
                                 {"hook": {"name": "post"}, "step": "PostHook"}]}
    ]  # fmt: skip
    for name in ("pre", "post"):
        cmd = ["sh", "-c", f'echo "{name} $FERRY_VM $FERRY_TARGET_NAME" >> {out}']
        docs.append(
            {"apiVersion": "ferry.dev/v1alpha1", "kind": "Hook", "metadata": {"name": name},
             "spec": {"command": cmd, "deadline": 30}}
        )  # fmt: skip
    await apply(stack.bus, docs)
    stack.run_services()
    stack.run_controller()
    # When the migration runs
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    # Then both hooks ran, first and last, with the VM and its target name
    assert mig["status"]["phase"] == "Succeeded"
    assert out.read_text().splitlines() == ["pre id-a a", "post id-a a"]
    steps = [s["name"] for s in (await stack.vms("m1"))["id-a"]["steps"]]
    assert steps[:2] == ["Started", "PreHook"] and steps[-2:] == ["PostHook", "Completed"]


async def test_a_failing_pre_hook_fails_the_vm_before_anything_else(stack: Stack) -> None:
    # Given a pre hook that exits 3
    src = stack.source("src", [make_vm("id-a", ProviderType.OVIRT)])
    docs = documents("ovirt", [])
    docs[4]["spec"]["vms"] = [
        {"id": "id-a", "hooks": [{"hook": {"name": "pre"}, "step": "PreHook"}]}
    ]
    docs.append(
        {"apiVersion": "ferry.dev/v1alpha1", "kind": "Hook", "metadata": {"name": "pre"},
         "spec": {"command": ["sh", "-c", "echo nope; exit 3"]}}
    )  # fmt: skip
    await apply(stack.bus, docs)
    stack.run_services()
    stack.run_controller()
    # When the migration runs
    await stack.migrate("m1")
    mig = await stack.wait_end("m1")
    # Then the VM failed in PreHook after its attempts, saying why; nothing else ran
    assert mig["status"]["phase"] == "Failed"
    state = (await stack.vms("m1"))["id-a"]
    assert state["errors"][-1]["reason"] == "hook 'pre' exited with 3: nope"
    assert state["errors"][-1]["step"] == "PreHook" and len(state["errors"]) == 3
    assert stack.services.ran == [] and src.log() == []
