"""The ``ferry`` commands of the controller's issue, against the real bus and controller."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
import typer
import yaml
from controller_harness import apply, documents, eventually, make_vm, migration_doc
from controller_stack import Stack
from typer.testing import CliRunner, Result

from ferry.cli import estimate, events, inventory, migrations
from ferry.cli import objects as cli_objects
from ferry.proto import migration
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
    # And a directory applies its YAML files (as kubectl's -f DIR); one without any says so
    (tmp_path / "notes.txt").write_text("not an object")
    whole = await ferry(stack, "apply", "-f", str(tmp_path))
    assert whole.exit_code == 0 and "plan/plan1 unchanged" in whole.output, whole.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = await ferry(stack, "apply", "-f", str(empty))
    assert none.exit_code == 1 and "no *.yaml, *.yml or *.json file in it" in none.output


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
    # (as a table, the empty one says so rather than print a bare header)
    table = await ferry(stack, "inventory", "ova")
    assert table.exit_code == 0 and f"no VMs in provider 'ova' ({empty})" in table.output
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
    # And the estimate was recorded at admission though no `ferry migrate` ran, kept
    # through the re-apply, and is compared with what happened
    assert json.loads(done["status"]["estimate"])["plan"] == "plan1"
    described = await ferry(stack, "describe", "migration", "m1")
    assert "estimate a:" in described.output and "actual" in described.output, described.output


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
    # And a cutover of a migration that ended, or of a cold one, is refused with why
    ended = await ferry(stack, "cutover", "m1")
    assert ended.exit_code == 1 and "has ended (Succeeded)" in ended.output, ended.output
    await apply(
        stack.bus, [*documents("libvirt", ["id-a"], plan="cold"), migration_doc("m2", "cold")]
    )
    cold = await ferry(stack, "cutover", "m2")
    assert cold.exit_code == 1 and "is cold (plan cold has no warm: true)" in cold.output


async def test_apply_warns_when_a_providers_location_is_not_there_and_stores_it(
    stack: Stack, tmp_path: Path
) -> None:
    # Given an OVA provider naming a directory that does not exist, one naming a directory
    # that does, and a vSphere provider whose host does not resolve
    present = tmp_path / "ova"
    present.mkdir()
    providers = [
        {"type": "ova", "url": str(tmp_path / "typo")},
        {"type": "ova", "url": str(present)},
        {"type": "vsphere", "url": "https://vcenter.no-such-host.invalid/sdk"},
    ]
    docs = [
        {"apiVersion": "ferry.dev/v1alpha1", "kind": "Provider", "metadata": {"name": f"p{i}"},
         "spec": spec}
        for i, spec in enumerate(providers)
    ]  # fmt: skip
    path = tmp_path / "providers.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    # When they are applied
    result = await ferry(stack, "apply", "-f", str(path))
    # Then all are stored (exit 0), with one warning line for each missing location
    assert result.exit_code == 0, result.output
    assert all(f"provider/p{i} created" in result.stdout for i in range(3))
    warnings = result.stderr.splitlines()
    assert warnings == [
        f"warning: provider/p0: {tmp_path / 'typo'} does not exist on this host; "
        "`ferry inventory` and migrations of it will fail until it does",
        "warning: provider/p2: host 'vcenter.no-such-host.invalid' does not resolve from this "
        "host; `ferry inventory` and migrations of it will fail until it does",
    ], result.stderr


async def test_the_active_controller_publishes_each_sources_inventory_and_its_changes(
    stack: Stack, tmp_path: Path
) -> None:
    # Given a source of two VMs and a source whose directory is gone
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    assert (await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))).exit_code == 0
    gone = {"apiVersion": "ferry.dev/v1alpha1", "kind": "Provider", "metadata": {"name": "gone"},
            "spec": {"type": "ova", "url": str(tmp_path / "no")}}  # fmt: skip
    (tmp_path / "gone.yaml").write_text(yaml.safe_dump(gone))
    assert (await ferry(stack, "apply", "-f", str(tmp_path / "gone.yaml"))).exit_code == 0

    async def reads(provider: str) -> list[migration.InventoryRead]:
        return [
            m
            for _, m in await stack.events()
            if isinstance(m, migration.InventoryRead) and m.provider == provider
        ]

    # When the controller becomes active
    ctl = stack.run_controller()
    # Then it publishes what each source holds, and why the other cannot be read
    await eventually(lambda: reads("src"), what="src's inventory")
    await eventually(lambda: reads("gone"), what="gone's inventory")
    (first,) = await reads("src")
    assert [v.id for v in first.vms] == ["id-a", "id-b"] and first.error == ""
    (broken,) = await reads("gone")
    assert broken.vms == [] and broken.error
    # And the destination (a kubevirt Provider) is not a source: nothing is read from it
    assert await reads("host") == []
    # When a VM appears at the source and the next round reads it
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA), make_vm("id-c", OVA)])
    await ctl.inventory.read_all()
    # Then the new inventory is published; an unchanged one is not repeated
    latest = (await reads("src"))[-1]
    assert [v.id for v in latest.vms] == ["id-a", "id-b", "id-c"]
    assert len(await reads("gone")) == 1


async def test_ctrl_c_during_migrate_wait_says_the_migration_goes_on(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a held migration followed with --wait
    stack.source("src", [make_vm("id-a", OVA), make_vm("id-b", OVA)])
    await ferry(stack, "apply", "-f", str(write_plan(tmp_path)))
    stack.services.script[("id-a", "CreateVM")] = "hold"
    stack.run_services()
    stack.run_controller()

    async def interrupted(*args: object) -> int:
        raise KeyboardInterrupt  # what asyncio.run raises on Ctrl-C

    # When the user presses Ctrl-C while it waits
    monkeypatch.setattr(migrations.watch, "follow", interrupted)
    result = await ferry(stack, "migrate", "plan1", "--wait", "--name", "m1")
    # Then it exits 130 saying the migration goes on, and how to stop it
    assert result.exit_code == 130, result.output
    assert "stopped following migration m1; it goes on" in result.output
    assert "ferry cancel m1" in result.output
    assert (await stack.migration("m1"))["status"]["phase"] in ("", "Running")
