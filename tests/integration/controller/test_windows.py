"""Maintenance windows: a VM running when its plan's window closes finishes the step it
is in, then waits at the next one until the window opens again."""

from __future__ import annotations

import asyncio
import math
import time
from datetime import UTC, datetime

import pytest
from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack
from test_cli import ferry

from ferry.migration_controller import scheduler
from ferry.proto.inventory import ProviderType


def _clock(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%H:%M:%S")


async def test_a_vm_whose_window_closes_finishes_its_step_and_waits(stack: Stack) -> None:
    # Given a plan whose daily window closes in 3 s and opens again 3 s later
    # (start after end: open all day but between the two)
    base = math.ceil(time.time())
    closes, opens = base + 3, base + 6
    window = {"start": _clock(opens), "end": _clock(closes)}
    stack.source("src", [make_vm("id-a", ProviderType.OVA)])
    await apply(stack.bus, documents("ova", ["id-a"], extra_plan={"window": window}))
    stack.services.script[("id-a", "CreateDataVolumes")] = "hold"
    stack.run_services()
    stack.run_controller()
    # When its VM is in CreateDataVolumes as the window closes, and that step ends after
    await stack.migrate("m1")
    await eventually(lambda: bool(stack.services.holding), what="CreateDataVolumes runs")
    await asyncio.sleep(max(0.0, closes + 0.2 - time.time()))
    stack.services.released.add(("id-a", "CreateDataVolumes"))
    # Then the step finishes but the next one does not start while the window is shut
    while time.time() < opens - 0.3:
        assert "AllocateDisks" not in stack.services.runs("id-a")
        await asyncio.sleep(0.05)
    steps = (await stack.vms("m1"))["id-a"]["steps"]
    done = {s["name"]: s["status"] for s in steps}
    assert done["CreateDataVolumes"] == "Completed" and done["AllocateDisks"] == "Running"
    described = (await ferry(stack, "describe", "plan", "plan1")).output
    assert f"window {window['start']}-{window['end']} UTC" in described
    # And once it opens the VM goes on to the end
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    assert "AllocateDisks" in stack.services.runs("id-a")


@pytest.mark.slow  # about 10 s: a whole stack, one VM
async def test_a_plan_window_edited_while_its_vms_wait_applies_without_a_restart(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a plan whose window is shut for the next hours, its migration started
    # (the controller re-reads Budgets and Plans every BUDGET_REFRESH seconds)
    monkeypatch.setattr(scheduler, "BUDGET_REFRESH", 0.2)
    now = time.time()
    shut = {"start": _clock(now + 3 * 3600), "end": _clock(now + 4 * 3600)}
    stack.source("src", [make_vm("id-a", ProviderType.OVA)])
    await apply(stack.bus, documents("ova", ["id-a"], extra_plan={"window": shut}))
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    described = ""

    async def held() -> bool:
        nonlocal described
        described = (await ferry(stack, "describe", "plan", "plan1")).output
        return "outside its window" in described

    await eventually(held, what="the VM held by the plan's window")
    assert not stack.services.runs("id-a")
    # When the user opens the window (the same Plan, applied again with another one)
    wide = {"start": _clock(now - 30), "end": _clock(now - 60)}  # all day but 30 s of it
    await apply(stack.bus, documents("ova", ["id-a"], extra_plan={"window": wide}))
    # Then the waiting VM starts and completes, in the migration already running
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    assert "CreateDataVolumes" in stack.services.runs("id-a")
