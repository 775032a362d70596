"""The ``ferry`` commands of the controller's issue, against the real bus and controller."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import typer
import yaml
from conftest import Stack
from controller_harness import apply, documents, eventually, make_vm
from typer.testing import CliRunner, Result

from ferry.cli import estimate, events, inventory, migrations
from ferry.cli import objects as cli_objects
from ferry.proto.inventory import PowerState, ProviderType

OVA = ProviderType.OVA


def cli() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    for module in (cli_objects, migrations, estimate, events, inventory):
        module.register(app)
    return app


async def ferry(stack: Stack, *args: str) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, cli(), [*args, "--nats", stack.url])


def write_plan(tmp: Path, **kw: object) -> Path:
    path = tmp / "plan.yaml"
    path.write_text(yaml.safe_dump_all(documents("ova", ["id-a", "id-b"], **kw)))  # type: ignore[arg-type]
    return path


async def test_apply_and_get(stack: Stack, tmp_path: Path) -> None:
    # Given a multi-document YAML file with providers, maps and a plan
    path = write_plan(tmp_path)
    # When it is applied twice
    first = await ferry(stack, "apply", "-f", str(path))
    second = await ferry(stack, "apply", "-f", str(path))
    # Then every object was created, then left unchanged
    assert first.exit_code == 0, first.output
    assert "plan/plan1 created" in first.output and "provider/src created" in first.output
    assert "plan/plan1 unchanged" in second.output
    # And get lists them, as a table and as JSON
    table = await ferry(stack, "get", "plans")
    assert "plan1" in table.output and "cold" in table.output
    raw = await ferry(stack, "get", "providers", "-o", "json")
    assert {d["metadata"]["name"] for d in json.loads(raw.output)} == {"src", "host"}


async def test_apply_errors_are_one_line_naming_file_path_and_problem(
    stack: Stack, tmp_path: Path
) -> None:
    # Given files with an unknown field, broken YAML, and a reference to a missing object
    docs = documents("ova", ["id-a"])
    docs[4]["spec"]["vms"][0]["bogus"] = 1
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump_all(docs))
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Plan\nmetadata: {name: x\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(documents("ova", ["id-a"])[4]))
    # When each is applied
    results = {
        p.name: await ferry(stack, "apply", "-f", str(p)) for p in (unknown, broken, missing)
    }
    # Then each fails with exactly one line that names the file, the place and the problem
    for name, result in results.items():
        assert result.exit_code == 1, name
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert str(tmp_path / name) in result.output
    assert (
        "document 5 (Plan plan1): spec.vms[0].bogus: unknown field"
        in results["unknown.yaml"].output
    )
    assert "line 3, column 1: invalid YAML" in results["broken.yaml"].output
    assert "spec.provider.source: Provider 'src' does not exist" in results["missing.yaml"].output
    # And nothing was written
    assert json.loads((await ferry(stack, "get", "plans", "-o", "json")).output) == []


async def test_migrate_wait_describe_and_events(stack: Stack, tmp_path: Path) -> None:
    # Given a plan of two VMs (one off at the source) and the controller with the services
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA, PowerState.OFF)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    stack.run_services()
    stack.run_controller()
    # When it is migrated with --wait
    result = await ferry(stack, "migrate", "plan1", "--wait", "--name", "m1")
    # Then the command showed progress and ended with success
    assert result.exit_code == 0, result.output
    assert "migration m1: 2 succeeded, 0 failed, 0 canceled" in result.output
    assert "a: Succeeded" in result.output
    # And describe shows each VM's pipeline with its steps and disks
    described = await ferry(stack, "describe", "migration", "m1")
    assert "phase Succeeded" in described.output
    assert "✓ ConvertGuest" in " ".join(described.output.split()).replace("✓ ", "✓ ")
    assert "disk d2: 8.0 MiB / 8.0 MiB (100%)" in described.output
    # And the audit stream has the migration's events, as text and as JSON
    text = await ferry(stack, "events", "--migration", "m1")
    assert "migration.vm_completed.v1" in text.output
    lines = (await ferry(stack, "events", "--migration", "m1", "-o", "json")).output.splitlines()
    kinds = [json.loads(line)["type"] for line in lines]
    assert kinds[0] == "migration.started.v1" and kinds[-1] == "migration.completed.v1"
    assert all("secret" not in line.lower() for line in lines)


async def test_migrate_wait_exits_1_when_a_vm_fails_and_cancel(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a plan whose first VM fails to convert, and whose second is held
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    stack.services.script[("id-a", "ConvertGuest")] = "fail"
    stack.services.script[("id-b", "CreateVM")] = "hold"
    stack.run_services()
    stack.run_controller()
    # When it is migrated with --wait, and the held VM is canceled by name meanwhile
    waiting = asyncio.create_task(ferry(stack, "migrate", "plan1", "--wait", "--name", "m1"))
    await eventually(lambda: ("id-b", "CreateVM") in stack.services.holding, what="b held")
    canceled = await ferry(stack, "cancel", "m1", "--vm", "b")
    result = await waiting
    # Then cancel was accepted and migrate exited 1 with the counts
    assert canceled.exit_code == 0 and "cancel requested" in canceled.output
    assert result.exit_code == 1
    assert "0 succeeded, 1 failed, 1 canceled" in result.output
    # And the Migration records the cancel request
    doc = json.loads((await ferry(stack, "get", "migrations", "m1", "-o", "json")).output)[0]
    assert doc["spec"]["cancel"] == [{"name": "b"}]
    assert doc["status"]["phase"] == "Failed"
    # And cancel of an unknown VM is one clear line
    bad = await ferry(stack, "cancel", "m1", "--vm", "nope")
    assert bad.exit_code == 1 and "has no VM 'nope'" in bad.output


async def test_inventory_of_an_ova_directory(stack: Stack, tmp_path: Path) -> None:
    # Given an OVA provider over an empty directory, and one over a missing directory
    empty = tmp_path / "ova"
    empty.mkdir()
    spec = textwrap.dedent(
        f"""
        apiVersion: ferry.dev/v1alpha1
        kind: Provider
        metadata: {{name: ova}}
        spec: {{type: ova, url: "{empty}"}}
        ---
        apiVersion: ferry.dev/v1alpha1
        kind: Provider
        metadata: {{name: gone}}
        spec: {{type: ova, url: "{tmp_path / "gone"}"}}
        """
    )
    path = tmp_path / "p.yaml"
    path.write_text(spec)
    await ferry(stack, "apply", "-f", str(path))
    # When their inventories are listed
    ok = await ferry(stack, "inventory", "ova", "--output", "json")
    gone = await ferry(stack, "inventory", "gone")
    # Then the empty one lists nothing and the missing one says why in one line
    assert ok.exit_code == 0 and json.loads(ok.output) == []
    assert gone.exit_code == 1 and "provider 'gone'" in gone.output


async def test_applying_a_migration_starts_it_and_reapplying_with_cancel_cancels(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a plan whose second VM is held in CreateVM
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    stack.services.script[("id-b", "CreateVM")] = "hold"
    stack.run_services()
    stack.run_controller()
    mig = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Migration",
        "metadata": {"name": "m1"},
        "spec": {"plan": {"name": "plan1"}},
    }
    path = tmp_path / "m1.yaml"
    path.write_text(yaml.safe_dump(mig))
    # When the Migration is applied
    created = await ferry(stack, "apply", "-f", str(path))
    # Then it starts
    assert "migration/m1 created" in created.output
    await eventually(lambda: ("id-b", "CreateVM") in stack.services.holding, what="b held")
    # And when it is applied again listing VM b under spec.cancel
    mig["spec"]["cancel"] = [{"name": "b"}]  # type: ignore[index]
    path.write_text(yaml.safe_dump(mig))
    again = await ferry(stack, "apply", "-f", str(path))
    # Then b is canceled, a completes, and the migration ends Canceled
    assert "migration/m1 configured" in again.output
    done = await stack.wait_end("m1")
    vms = await stack.vms("m1")
    assert vms["id-a"]["status"] == "Succeeded" and vms["id-b"]["status"] == "Canceled"
    assert done["status"]["phase"] == "Canceled"


async def test_cutover_ends_the_precopies_of_a_running_warm_migration(stack: Stack) -> None:
    # Given a warm migration copying again every second, with no cutover set
    src = stack.source("src", [make_vm("id-a", ProviderType.LIBVIRT)])
    docs = documents("libvirt", ["id-a"], warm=True, extra_plan={"precopyIntervalSeconds": 1})
    await apply(stack.bus, docs)
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(lambda: "CopyDisks@1" in stack.services.runs("id-a"), what="a second precopy")
    assert src.power()["id-a"] == "on"
    # When the user moves the cutover to now
    done = await ferry(stack, "cutover", "m1", "--at", "now")
    # Then precopies stop, the source is powered off and the migration completes
    assert done.exit_code == 0, done.output
    mig = await stack.wait_end("m1")
    assert mig["status"]["phase"] == "Succeeded"
    assert "Finalize" in stack.services.runs("id-a") and src.log() == ["off:id-a"]
    # (cut over by the command, not by running out of precopies: the plan allows 50)
    rounds = [s for s in stack.services.runs("id-a") if s.startswith("CopyDisks")]
    assert len(rounds) < 10, rounds
    assert (await ferry(stack, "cutover", "nope")).exit_code != 0
