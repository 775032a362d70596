"""``ferry --kubeconfig`` / ``--context``: the same commands against a cluster's ferry.dev
objects (the stand-in's API server, reached through a kubeconfig the test writes)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner, Result

sys.path.insert(0, str(Path(__file__).parent))

from operated import NS, documents, eventually, operated

from ferry.cli.main import app
from ferry.platform import crdgen
from ferry.testing.cluster.cluster import Cluster


def kubeconfig(cluster: Cluster, path: Path) -> Path:
    """A kubeconfig as a user has one: a named context, its cluster and a token user."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": cluster.url}}],
                "users": [{"name": "tester", "user": {"token": "not-a-real-token"}}],
                "contexts": [
                    {
                        "name": "standin",
                        "context": {"cluster": "standin", "user": "tester", "namespace": NS},
                    }
                ],
                "current-context": "standin",
            }
        )
    )
    return path


async def ferry(*args: str, env: dict[str, str] | None = None) -> Result:
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


def objects_file(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


async def test_apply_and_get_with_a_kubeconfig_work_on_the_clusters_objects(
    cluster: Cluster, tmp_path: Path
) -> None:
    for crd in crdgen.crds():
        cluster.install_crd(crd)
    config = kubeconfig(cluster, tmp_path / "kubeconfig")
    docs = documents("ova", ["id-a"])
    path = objects_file(tmp_path / "plan.yaml", docs)
    k = ("--kubeconfig", str(config))

    # When the objects are applied to the cluster, twice
    first = await ferry(*k, "apply", "-f", str(path))
    second = await ferry(*k, "apply", "-f", str(path))
    # Then they are created there, then left unchanged (no stack runs: no bus was used)
    assert first.exit_code == 0, first.output
    assert "provider/src created" in first.output and "plan/plan1 created" in first.output
    assert "plan/plan1 unchanged" in second.output
    plans = cluster.store.kind("ferry.dev", "v1alpha1", "plans")
    stored = cluster.get(plans, NS, "plan1")
    assert stored is not None and stored["spec"]["vms"][0]["id"] == "id-a"
    # And a changed Plan is configured in place
    docs[-1]["spec"]["maxInFlight"] = 3
    objects_file(path, docs)
    third = await ferry(*k, "apply", "-f", str(path))
    assert "plan/plan1 configured" in third.output, third.output
    assert cluster.get(plans, NS, "plan1")["spec"]["maxInFlight"] == 3  # type: ignore[index]

    # And get shows them as it does locally, as a table and as JSON
    table = await ferry(*k, "get", "plans")
    assert table.exit_code == 0 and "plan1" in table.output and "cold" in table.output
    raw = await ferry(*k, "get", "providers", "-o", "json")
    assert {d["metadata"]["name"] for d in json.loads(raw.output)} == {"src", "host"}
    # (the context by name, from the kubeconfig KUBECONFIG names, works the same)
    named = await ferry("--context", "standin", "get", "plans", env={"KUBECONFIG": str(config)})
    assert named.exit_code == 0 and "plan1" in named.output, named.output

    # And an apply naming a map the cluster does not have writes nothing and says why
    hook = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Hook",
        "metadata": {"name": "h"},
        "spec": {"command": ["true"]},
    }
    broken = {**docs[-1], "metadata": {"name": "plan9"}}
    maps = {"network": {"name": "nope"}, "storage": {"name": "disks"}}
    broken["spec"] = {**docs[-1]["spec"], "map": maps}
    bad = await ferry(*k, "apply", "-f", str(objects_file(tmp_path / "bad.yaml", [hook, broken])))
    assert bad.exit_code == 1
    assert "spec.map.network: NetworkMap 'nope' does not exist" in bad.output
    hooks = cluster.store.kind("ferry.dev", "v1alpha1", "hooks")
    assert cluster.get(plans, NS, "plan9") is None and cluster.get(hooks, NS, "h") is None

    # And a command of the bus says it is one, rather than acting on some other stack
    refused = await ferry(*k, "migrate", "plan1")
    assert refused.exit_code == 2
    assert "`ferry migrate` works on the local stack's bus only" in refused.output
    # and the token never shows
    for said in (first, second, third, table, raw, named, bad, refused):
        assert "not-a-real-token" not in said.output


async def test_describe_with_a_kubeconfig_shows_the_pipeline_the_operator_wrote(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    async with operated(nats_url, cluster, tmp_path) as op:
        config = kubeconfig(cluster, tmp_path / "kubeconfig")
        k = ("--kubeconfig", str(config))
        # Given objects and a Migration applied to the cluster with ferry
        mig = {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "Migration",
            "metadata": {"name": "m1"},
            "spec": {"plan": {"name": "plan1"}},
        }
        path = objects_file(tmp_path / "all.yaml", [*documents("ova", ["id-a"]), mig])
        applied = await ferry(*k, "apply", "-f", str(path))
        assert applied.exit_code == 0, applied.output

        # When the operator has run it and written its status
        async def ended() -> bool:
            status = (await op.in_cluster("Migration", "m1")).get("status") or {}
            return status.get("phase") == "Succeeded" and bool(status.get("vms"))

        await eventually(ended, timeout=30, what="m1 succeeded, as its status says")
        shown = await ferry(*k, "describe", "migration", "m1")

        # Then describe shows it from the cluster: the phase, the VM and its steps
        assert shown.exit_code == 0, shown.output
        assert "Migration m1" in shown.output and "phase Succeeded" in shown.output
        assert "a (id-a) → migrated/a" in shown.output
        for step in ("StorePowerState", "ConvertGuest", "CreateVM", "PowerOn"):
            assert step in shown.output
        assert "✓" in shown.output and "✗" not in shown.output
        # and a plan: its limits, and that nothing waits
        plan = await ferry(*k, "describe", "plan", "plan1")
        assert plan.exit_code == 0, plan.output
        assert "Plan plan1   1 VMs" in plan.output and "no VM waiting" in plan.output
