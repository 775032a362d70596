"""Operator mode: the cluster's ferry.dev objects drive the controller, and their status
shows what it did (against the stand-in's API server and a real nats-server)."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from operated import NS, OTHER, Operated, documents, eventually, operated, placed, runs_as

from ferry.bus import Bus
from ferry.bus.tasks import cancel_and_wait
from ferry.migration_controller import leadership
from ferry.migration_controller.operator.finalizers import FINALIZER
from ferry.proto import pipeline
from ferry.runtime import objectbucket
from ferry.testing.cluster.cluster import Cluster


async def create_all(op: Operated, docs: list[dict[str, Any]]) -> None:
    for doc in placed(docs):
        await op.api.create(doc)


def migration(name: str, plan: str = "plan1") -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Migration",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"plan": {"name": plan}},
    }


async def test_a_migration_created_in_the_cluster_runs_and_its_status_shows_the_pipeline(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    async with operated(nats_url, cluster, tmp_path) as op:
        # Given a source, maps and a Plan created in the cluster
        await create_all(op, documents("ova", ["id-a"]))
        # When a Migration is created there
        await op.api.create(migration("m1"))

        # Then it reaches the objects bucket and the controller starts its VM
        async def started() -> bool:
            return "migration.step_started.v1" in await op.events(runs_as("m1"))

        await eventually(started, timeout=20, what="the controller starts m1's first step")
        assert await op.bucket("Migration", "m1") is not None

        # And once it ended (its finalizer gone: nothing runs that uses it), its status in
        # the cluster shows the controller's pipeline
        async def ended() -> bool:
            found = await op.in_cluster("Migration", "m1")
            status = found.get("status") or {}
            vms = status.get("vms") or []
            held = FINALIZER in (found["metadata"].get("finalizers") or [])
            return (
                status.get("phase") == "Succeeded"
                and [v["status"] for v in vms] == ["Succeeded"]
                and not held
            )

        await eventually(ended, timeout=30, what="m1's status shows it succeeded")
        status = (await op.in_cluster("Migration", "m1"))["status"]
        states = await objectbucket.vm_states(op.bus, runs_as("m1"))
        assert status["vms"] == [
            pipeline.summary(s).model_dump(mode="json", exclude_none=True) for s in states
        ]
        [vm] = status["vms"]
        assert vm["name"] == "a" and vm["step"] == "Completed" and vm["flow"] == "conversion"
        assert [s["status"] for s in vm["steps"]] == ["Completed"] * len(vm["steps"])
        assert {"CreateDataVolumes", "ConvertGuest", "CreateVM"} <= {s["name"] for s in vm["steps"]}
        ready = await op.condition("Migration", "m1")
        assert ready["status"] == "True"

        # And a status that no longer changes is not written again
        def writes() -> int:
            return sum(
                1
                for r in cluster.api.requests
                if r.method == "PUT" and r.path.endswith("/migrations/m1/status")
            )

        settled = writes()
        version = (await op.in_cluster("Migration", "m1"))["metadata"]["resourceVersion"]
        await op.status_rounds(10)
        assert writes() == settled
        assert (await op.in_cluster("Migration", "m1"))["metadata"]["resourceVersion"] == version


async def test_objects_of_one_name_in_two_namespaces_are_two_objects(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    async with operated(nats_url, cluster, tmp_path) as op:
        # Given the same Providers, maps and Plan (by name) in two namespaces, two teams'
        for namespace in (NS, OTHER):
            for doc in placed(documents("ova", ["id-a"]), namespace):
                await op.api.create(doc)

        async def succeeded(namespace: str) -> bool:
            found = await op.api.get("Migration", namespace, "m1")
            return ((found or {}).get("status") or {}).get("phase") == "Succeeded"

        # When each team creates a Migration m1 of its Plan, one after the other
        for namespace in (NS, OTHER):
            await op.api.create(placed([migration("m1")], namespace)[0])
            await eventually(
                lambda ns=namespace: succeeded(ns), timeout=30, what=f"{namespace}/m1 succeeds"
            )

        # Then both were applied and ran, each as its own migration of its own Plan
        for namespace in (NS, OTHER):
            stored = await op.bucket("Migration", "m1", namespace)
            assert stored is not None and stored["metadata"]["namespace"] == namespace
            assert stored["spec"]["plan"]["name"] == f"{namespace}.plan1"
            plan = await op.bucket("Plan", "plan1", namespace)
            assert plan is not None
            assert plan["spec"]["provider"]["source"]["name"] == f"{namespace}.src"
            assert "migration.step_started.v1" in await op.events(runs_as("m1", namespace))
            assert (await op.condition("Migration", "m1"))["status"] == "True"
            [vm] = (await op.in_cluster("Migration", "m1", namespace))["status"]["vms"]
            assert vm["status"] == "Succeeded"

        # And deleting one team's Migration leaves the other's alone
        await op.api.delete("Migration", OTHER, "m1")

        async def gone() -> bool:
            return await op.bucket("Migration", "m1", OTHER) is None

        await eventually(gone, timeout=20, what=f"{OTHER}/m1 leaves the bucket")
        assert await op.bucket("Migration", "m1", NS) is not None
        assert await op.api.get("Migration", NS, "m1") is not None


async def test_an_invalid_plan_gets_a_condition_naming_the_problem_and_is_applied_once_fixed(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    async with operated(nats_url, cluster, tmp_path) as op:
        # Given providers and maps in the cluster, and a Plan naming a NetworkMap that is not
        provider_src, provider_host, net, disks, plan = documents("ova", ["id-a"])
        await create_all(op, [provider_src, provider_host, net, disks])
        plan["spec"]["map"]["network"]["name"] = "later"
        await create_all(op, [plan])
        # Then the Plan's status says which reference is missing, and it is not in the bucket
        ready = await op.condition("Plan", "plan1")
        assert ready["status"] == "False" and ready["reason"] == "ReferenceNotFound"
        assert "spec.map.network: NetworkMap 'default/later' does not exist" in ready["message"]
        assert await op.bucket("Plan", "plan1") is None

        # And a Plan whose target namespace is no DNS label (the CRD cannot say so) is refused
        bad = {**plan, "metadata": {"name": "plan2"}}
        bad["spec"] = {**plan["spec"], "targetNamespace": "Not_A_Label"}
        await create_all(op, [bad])
        refused = await op.condition("Plan", "plan2")
        assert refused["reason"] == "Invalid" and "spec.targetNamespace" in refused["message"]
        assert "is not a DNS-1123 label" in refused["message"]

        # When the missing map is created
        await create_all(op, [{**net, "metadata": {"name": "later"}}])

        # Then the first Plan is applied after all and says so
        async def applied() -> bool:
            return await op.bucket("Plan", "plan1") is not None

        await eventually(applied, timeout=20, what="plan1 is applied once its map exists")

        async def ready_now() -> bool:
            return (await op.condition("Plan", "plan1"))["status"] == "True"

        await eventually(ready_now, timeout=20, what="plan1 is Ready")
        assert (await op.condition("Plan", "plan2"))["status"] == "False"


async def test_a_watch_broken_by_410_lists_again_and_loses_nothing(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    async with operated(nats_url, cluster, tmp_path) as op:
        # Given objects the operator applied
        docs = documents("ova", ["id-a"])
        hook = {
            "apiVersion": "ferry.dev/v1alpha1",
            "kind": "Hook",
            "metadata": {"name": "notify"},
            "spec": {"command": ["true"]},
        }
        await create_all(op, [*docs, hook])

        async def synced() -> bool:
            return await op.bucket("Plan", "plan1") is not None and bool(
                await op.bucket("Hook", "notify")
            )

        await eventually(synced, timeout=20, what="plan1 reaches the bucket")
        # When the watches break, and while none is open a Plan is created, a Hook deleted
        # and the server forgets those changes (compaction): every resumed watch gets 410
        cluster.api.break_watches()
        plans, hooks = op.kind("plans"), op.kind("hooks")
        second = placed([{**docs[-1], "metadata": {"name": "plan2"}}])[0]
        cluster.store.create(plans, second)
        cluster.store.delete(hooks, NS, "notify")
        cluster.store.compact()
        gone_after = len(cluster.api.requests)

        # Then the operator lists again and the bucket has both changes
        async def caught_up() -> bool:
            return (
                await op.bucket("Plan", "plan2") is not None
                and await op.bucket("Hook", "notify") is None
            )

        await eventually(caught_up, timeout=20, what="the relist applies what the watch missed")
        # (through a list after the break, not a watch that replayed the changes)
        lists = [
            r.path
            for r in cluster.api.requests[gone_after:]
            if r.method == "GET" and r.query.get("watch") != "true"
        ]
        assert any(p.endswith("/plans") for p in lists), lists
        assert any(p.endswith("/hooks") for p in lists), lists
        # And the watches go on: a change made now arrives too
        await op.api.delete("Plan", NS, "plan2")

        async def deleted() -> bool:
            return await op.bucket("Plan", "plan2") is None

        await eventually(deleted, timeout=20, what="plan2 leaves the bucket")


async def test_a_deleted_object_leaves_the_bucket_and_a_deleted_migration_is_canceled_first(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    from controller_harness import Services

    # The services hold the VM at its copy, so the migration is running when deleted
    services = Services({("id-a", "ConvertGuest"): "hold"})
    async with operated(nats_url, cluster, tmp_path, services) as op:
        await create_all(op, documents("ova", ["id-a"]))
        await op.api.create(migration("m1"))

        async def holding() -> bool:
            return ("id-a", "ConvertGuest") in services.holding

        await eventually(holding, timeout=20, what="m1's VM is held in ConvertGuest")
        # When the map it uses is deleted, and then the running Migration
        await op.api.delete("NetworkMap", NS, "net")
        await op.api.delete("Migration", NS, "m1")

        # Then the Migration is canceled, then leaves the bucket
        async def canceled() -> bool:
            return "migration.vm_canceled.v1" in await op.events(runs_as("m1"))

        await eventually(canceled, timeout=30, what="the deleted migration's VM is canceled")

        async def mig_gone() -> bool:
            return await op.bucket("Migration", "m1") is None

        await eventually(mig_gone, timeout=30, what="the deleted Migration leaves the bucket")

        # And the map, kept while the migration used it (test_operator_finalizers), leaves too
        async def map_gone() -> bool:
            return await op.bucket("NetworkMap", "net") is None

        await eventually(map_gone, timeout=20, what="the NetworkMap leaves the bucket")


async def test_only_the_controller_holding_the_lease_reads_and_writes_the_cluster(
    nats_url: str, cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ferry.migration_controller.leadership")
    stop = asyncio.Event()
    holding: list[asyncio.Task[None]] = []
    other: dict[str, leadership.Leadership] = {}

    async def hold_the_lease(bus: Bus) -> None:
        lead = leadership.Leadership(bus, 2.0, owner="another-replica")
        assert await lead.acquire(stop)
        holding.append(asyncio.create_task(lead.hold()))
        other["lead"] = lead

    # Given another replica holds the lease when this controller starts
    async with operated(nats_url, cluster, tmp_path, first=hold_the_lease) as op:
        await create_all(op, documents("ova", ["id-a"]))

        def standing_by() -> bool:
            return "is standing by" in caplog.text

        await eventually(standing_by, timeout=20, what="the controller stands by")
        # When it has tried for the lease for longer than a lease lasts (the other renews it)
        await asyncio.sleep(3 * 2.0)
        # Then it has neither listed, watched nor written a ferry.dev object (the POSTs
        # are the test's own creates)
        calls = [r for r in cluster.api.requests if "/apis/ferry.dev/" in r.path]
        assert [r for r in calls if r.method != "POST"] == []
        assert await op.bucket("Plan", "plan1") is None

        # And once the other replica lets the lease go, it takes over and does both
        await cancel_and_wait(*holding)  # a single cancel can be lost in nats-py's waits
        await other["lead"].release()
        ready = await op.condition("Plan", "plan1")
        assert ready["status"] == "True"
        assert await op.bucket("Plan", "plan1") is not None
