"""``ferry estimate``, ``describe plan`` and the estimate recorded on a Migration, end to end."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import Stack
from controller_harness import make_vm
from test_cli import OVA, ferry, write_plan

from ferry.proto.estimate import ANNOTATION


async def test_estimate_states_its_inputs_then_learns_and_is_compared(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a plan on a pair that never migrated
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    # When it is estimated
    before = await ferry(stack, "estimate", "plan1")
    # Then every VM has cold and warm numbers and each input says it is assumed and why
    assert before.exit_code == 0, before.output
    assert "throughput: 50.0 MiB/s (assumed: no finished migration on src" in before.output
    assert "measured" not in before.output
    assert all(vm in before.output for vm in ("a ", "b "))
    # When the plan migrates
    stack.run_services()
    stack.run_controller()
    done = await ferry(stack, "migrate", "plan1", "--wait", "--name", "m1")
    assert done.exit_code == 0, done.output
    # And, written to a log (not a terminal), it printed one plain line per step change
    assert "\x1b[" not in done.output and "━" not in done.output
    steps = [line for line in done.output.splitlines() if line.split(" ", 1)[-1].startswith("a: ")]
    assert any(line.endswith("a: StorePowerState") for line in steps), done.output
    assert steps[-1].endswith("a: Succeeded") and len(steps) >= 4
    # Then the estimate made at the start is on the Migration and compared in describe
    doc = json.loads((await ferry(stack, "get", "migrations", "m1", "-o", "json")).output)[0]
    assert json.loads(doc["metadata"]["annotations"][ANNOTATION])["plan"] == "plan1"
    described = await ferry(stack, "describe", "migration", "m1")
    assert "estimate a:" in described.output and "actual" in described.output
    # And the next estimate of the plan rests on what was measured
    after = await ferry(stack, "describe", "plan", "plan1")
    assert "throughput:" in after.output and "(measured: 2 VM(s) on src" in after.output
    # And a second migration says which VMs it skips and why
    again = await ferry(stack, "migrate", "plan1", "--name", "m2")
    assert "skipped a: migrated already by migration m1" in again.output, again.output
