"""``ferry estimate``, ``describe plan`` and the estimate recorded on a Migration, end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from controller_harness import apply, documents, make_vm
from controller_stack import Stack
from test_cli import OVA, cli, ferry, write_plan
from typer.testing import CliRunner


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
    assert json.loads(doc["status"]["estimate"])["plan"] == "plan1"
    described = await ferry(stack, "describe", "migration", "m1")
    assert "estimate a:" in described.output and "actual" in described.output
    # And the next estimate of the plan rests on what was measured
    after = await ferry(stack, "describe", "plan", "plan1")
    assert "throughput:" in after.output and "(measured: 2 VM(s) on src" in after.output
    # (one page: the plan's header once, whoever prints which part)
    assert after.output.count("Plan plan1") == 1, after.output
    # And a second migration says which VMs it skips and why
    again = await ferry(stack, "migrate", "plan1", "--name", "m2")
    assert "skipped a: migrated already by migration m1" in again.output, again.output
    # And so does describe of that migration, once it ended with nothing to do
    await stack.wait_end("m2")
    second = await ferry(stack, "describe", "migration", "m2")
    assert "skipped a: migrated already by migration m1" in second.output, second.output
    assert "skipped b: migrated already by migration m1" in second.output
    # While describe of the first one names no VM as skipped
    assert "skipped" not in (await ferry(stack, "describe", "migration", "m1")).output


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
    # (and how to name a stack elsewhere: its data dir, or NATS with the CLI's identity)
    assert "FERRY_DATA_DIR" in result.output and "FERRY_NATS__CREDENTIALS_FILE" in result.output
    assert "Traceback" not in result.output


async def test_an_estimate_of_vms_the_source_lacks_says_so(stack: Stack, tmp_path: Path) -> None:
    # Given a plan of two VMs on an OVA directory that holds neither
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    (tmp_path / "ova").mkdir()
    provider = tmp_path / "src.yaml"
    provider.write_text(SOURCE.format(url=tmp_path / "ova"))
    await ferry(stack, "apply", "-f", str(provider))
    # When it is estimated, and described
    for args in (("estimate", "plan1"), ("describe", "plan", "plan1")):
        result = await ferry(stack, *args)
        # Then the numbers come with a warning naming each missing VM
        assert result.exit_code == 0, result.output
        for vm in ("id-a", "id-b"):
            assert f"warning: VM {vm!r} is not in provider 'src'" in result.output, result.output
    # And when the directory is not there at all, the estimate says its sizes are unknown
    provider.write_text(SOURCE.format(url=tmp_path / "gone"))
    await ferry(stack, "apply", "-f", str(provider))
    gone = await ferry(stack, "estimate", "plan1")
    assert "warning: provider 'src' could not be read from here" in gone.output, gone.output


SOURCE = """
apiVersion: ferry.dev/v1alpha1
kind: Provider
metadata: {{name: src}}
spec: {{type: ova, url: "{url}"}}
"""


def test_a_refused_identity_names_the_data_dir_not_ferry_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a stack's NATS named with --nats from elsewhere: the CLI connects as anonymous
    from ferry.bus import Bus, BusError

    async def refused(*args: object, **kw: object) -> Bus:
        logging.getLogger("ferry.bus.connection").warning("nats: Error: 'Authorization Violation'")
        raise BusError("NATS at nats://127.0.0.1:4 refused the connection: authorization "
                       "violation (as anonymous)")  # fmt: skip

    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setattr(Bus, "connect", refused)
    # When a command runs
    result = CliRunner().invoke(cli(), ["get", "plans", "--nats", "nats://127.0.0.1:4"])
    # Then it says where the identity is, not that the stack may be down
    assert result.exit_code == 1
    assert "set FERRY_DATA_DIR" in result.output and "is the stack up" not in result.output
    # And once: the bus's warning about each failed attempt is not printed before it
    assert not [r for r in caplog.records if r.name == "ferry.bus.connection"]


async def test_an_estimate_shows_only_what_the_source_type_can_do(stack: Stack) -> None:
    # Given a plan on an OVA source, a warm one on it, and a plan on a libvirt source
    await apply(stack.bus, documents("ova", ["id-a"]))
    await apply(stack.bus, documents("ova", ["id-a"], plan="warm-ova", warm=True))
    await apply(stack.bus, documents("libvirt", ["id-a"], plan="kvm", provider="kvm"))
    # When the OVA plan is estimated, and described
    for args in (("estimate", "plan1"), ("describe", "plan", "plan1")):
        ova = await ferry(stack, *args)
        # Then it is cold only, saying why: no warm columns, no warm-only input
        assert ova.exit_code == 0, ova.output
        assert "cold only: OVA sources cannot run warm" in ova.output, ova.output
        assert "WARM" not in ova.output and "final_delta" not in ova.output, ova.output
        assert "COLD DOWNTIME" in ova.output
    # And a warm plan on that source is said to be one a migration would reject
    warm = await ferry(stack, "estimate", "warm-ova")
    assert "warning: plan 'warm-ova' is warm but OVA sources cannot run warm" in warm.output
    # While a source that can run warm gets both, side by side
    kvm = await ferry(stack, "estimate", "kvm")
    assert kvm.exit_code == 0, kvm.output
    assert "WARM DOWNTIME" in kvm.output and "cold only" not in kvm.output, kvm.output
