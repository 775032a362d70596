"""``ferry migrate`` without ``--wait`` says the controller's admission verdict, bounded."""

from __future__ import annotations

from pathlib import Path

import pytest
from controller_harness import make_vm
from controller_stack import Stack
from test_cli import OVA, ferry, write_plan

from ferry.cli import verdict


async def test_a_rejected_migration_says_why_and_exits_1(stack: Stack, tmp_path: Path) -> None:
    # Given a plan of two VMs whose source holds only one
    stack.source("src", [make_vm("id-a", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    stack.run_services()
    stack.run_controller()
    # When it is migrated without --wait
    result = await ferry(stack, "migrate", "plan1", "--name", "m1")
    # Then the command waited for preflight's verdict: rejected, with the missing VM named
    assert result.exit_code == 1, result.output
    assert "migration/m1 created" in result.stdout
    assert "migration/m1 rejected by preflight; nothing ran:" in result.stderr
    assert "id-b" in result.stderr, result.stderr


async def test_an_accepted_migration_says_so_and_how_to_follow_it(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a plan whose VMs are all at the source, and the controller running
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    stack.run_services()
    stack.run_controller()
    # When it is migrated without --wait
    result = await ferry(stack, "migrate", "plan1", "--name", "m1")
    # Then the controller's acceptance is printed, with how to follow the migration
    assert result.exit_code == 0, result.output
    assert "migration/m1 accepted: 2 VMs to migrate" in result.stdout, result.output
    assert "ferry describe migration m1" in result.stdout
    await stack.wait_end("m1")


async def test_no_verdict_in_time_says_how_to_follow_and_exits_0(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no controller running (nothing will decide), and a short wait for the verdict
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    monkeypatch.setattr(verdict, "SECONDS", 0.5)
    # When a migration is started without --wait
    result = await ferry(stack, "migrate", "plan1", "--name", "m1")
    # Then it is not an error: the command says no verdict came and how to follow it
    assert result.exit_code == 0, result.output
    assert "migration/m1: no verdict from the controller within 0.5 s" in result.stdout
    assert "ferry describe migration m1" in result.stdout
