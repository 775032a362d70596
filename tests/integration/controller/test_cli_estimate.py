"""``ferry estimate``, ``describe plan`` and the estimate recorded on a Migration, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Stack
from controller_harness import make_vm
from test_cli import OVA, cli, ferry, write_plan
from typer.testing import CliRunner

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


def test_without_a_stack_the_cli_says_where_it_looked_and_guesses_no_nats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no stack in the data dir and no NATS named
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path / "nothing"))
    monkeypatch.delenv("FERRY_NATS__URL", raising=False)
    # When a command needs the bus
    result = CliRunner().invoke(cli(), ["get", "plans"])
    # Then it fails with one line naming where it looked and how to fix it, no traceback
    assert result.exit_code == 1
    assert f"no Ferry stack found in {tmp_path / 'nothing'}" in result.output
    assert "ferry up" in result.output and "--nats" in result.output
    assert "Traceback" not in result.output
