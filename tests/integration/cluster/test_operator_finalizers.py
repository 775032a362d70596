"""Operator mode keeps what a running migration uses: its finalizer (``ferry.dev/in-use``)
on the Migration and everything it uses, so a DELETE waits for the migration to end
(against the stand-in's API server, which keeps finalizers as upstream does)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from operated import NS, Operated, Services, documents, eventually, operated, placed, runs_as

from ferry.migration_controller.operator.finalizers import FINALIZER
from ferry.proto.phases import VmStatus
from ferry.runtime import objectbucket
from ferry.testing.cluster.cluster import Cluster

HELD = ("id-a", "ConvertGuest")


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def migration(name: str, plan: str = "plan1") -> dict[str, Any]:
    return doc("Migration", name, {"plan": {"name": plan}})


def used_objects() -> list[dict[str, Any]]:
    """A plan whose VM has a post hook, a global Budget (it covers every VM) and one
    covering no VM of the plan."""
    *rest, plan = documents("ova", ["id-a"])
    plan["spec"]["vms"][0]["hooks"] = [{"hook": {"name": "after"}, "step": "PostHook"}]
    return [
        *rest,
        doc("Hook", "after", {"command": ["true"]}),
        doc("Budget", "all", {"scope": "global", "maxVms": 4}),
        doc("Budget", "elsewhere", {"scope": "host", "names": ["no-such-host"], "maxVms": 1}),
        plan,
    ]


USED = [
    ("Provider", "src"),
    ("Provider", "host"),
    ("NetworkMap", "net"),
    ("StorageMap", "disks"),
    ("Hook", "after"),
    ("Budget", "all"),
    ("Plan", "plan1"),
    ("Migration", "m1"),
]


async def finalizers(op: Operated, kind: str, name: str) -> list[str] | None:
    """The object's finalizers (None: it is not in the cluster)."""
    found = await op.api.get(kind, NS, name)
    return None if found is None else list(found["metadata"].get("finalizers") or [])


async def running_and_held(op: Operated, services: Services) -> None:
    for made in placed([*used_objects(), migration("m1")]):
        await op.api.create(made)
    await eventually(lambda: HELD in services.holding, timeout=20, what="m1 held at its copy")

    async def all_held() -> bool:
        return all([await finalizers(op, k, n) == [FINALIZER] for k, n in USED])

    await eventually(all_held, timeout=20, what="the finalizer on m1 and all it uses")


async def test_a_provider_deleted_while_a_migration_uses_it_stays_until_the_migration_ends(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    services = Services({HELD: "hold"})
    async with operated(nats_url, cluster, tmp_path, services) as op:
        # Given a running migration, holding its Plan and all the Plan names, the hook and
        # the Budget covering its VM (not the one that covers none)
        await running_and_held(op, services)
        assert await finalizers(op, "Budget", "elsewhere") == []

        # When the source Provider is deleted
        await op.api.delete("Provider", NS, "src")

        # Then it stays in the cluster (marked) and in the bucket, its status says why
        kept = await op.in_cluster("Provider", "src")
        assert kept["metadata"]["deletionTimestamp"]
        deleting = await op.condition("Provider", "src", "Deleting")
        assert deleting["status"] == "True" and deleting["reason"] == "InUse"
        assert deleting["message"].endswith(": default/m1"), deleting
        assert await op.bucket("Provider", "src") is not None

        # And the migration goes on to its end
        services.released.add(HELD)

        async def succeeded() -> bool:
            states = await objectbucket.vm_states(op.bus, runs_as("m1"))
            return [s.status for s in states] == [VmStatus.SUCCEEDED]

        await eventually(succeeded, timeout=30, what="m1's VM succeeds")

        # Then the Provider is gone from the cluster and the bucket
        async def gone() -> bool:
            in_cluster = await op.api.get("Provider", NS, "src")
            return in_cluster is None and await op.bucket("Provider", "src") is None

        await eventually(gone, timeout=20, what="the deleted Provider goes once m1 ended")

        # And nothing the ended migration used carries the finalizer any more
        async def released() -> bool:
            return all([await finalizers(op, k, n) == [] for k, n in USED if n != "src"])

        await eventually(released, timeout=20, what="the ended migration's objects released")


async def test_a_migration_deleted_while_running_is_canceled_then_gone(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    services = Services({HELD: "hold"})
    async with operated(nats_url, cluster, tmp_path, services) as op:
        # Given a running migration holding what it uses, whose cancel will wait while it
        # powers the source on again (the VM is not canceled until that is done)
        await running_and_held(op, services)
        source = tmp_path / "sources" / "src"
        (source / "hold-power-on-id-a").touch()

        # When it is deleted
        await op.api.delete("Migration", NS, "m1")

        # Then it is canceled, and until its cancel is done it stays (marked) in the
        # cluster and the bucket, its status saying so
        holding = source / "holding-power-on-id-a"
        await eventually(holding.exists, timeout=20, what="m1's cancel restores the power")
        deleting = await op.condition("Migration", "m1", "Deleting")
        assert deleting["reason"] == "Canceling", deleting
        await op.status_rounds(3)
        assert (await op.in_cluster("Migration", "m1"))["metadata"]["deletionTimestamp"]
        assert await op.bucket("Migration", "m1") is not None
        assert await finalizers(op, "Migration", "m1") == [FINALIZER]

        # And once the cancel is done, it is gone
        (source / "hold-power-on-id-a").unlink()

        async def gone() -> bool:
            if await op.api.get("Migration", NS, "m1") is not None:
                return False
            states = await objectbucket.vm_states(op.bus, runs_as("m1"))
            assert [s.status for s in states] == [VmStatus.CANCELED], "gone before canceled"
            return True

        await eventually(gone, timeout=30, what="the deleted Migration leaves the cluster")
        assert "migration.vm_canceled.v1" in await op.events(runs_as("m1"))

        async def out_of_the_bucket() -> bool:
            return await op.bucket("Migration", "m1") is None

        await eventually(out_of_the_bucket, timeout=20, what="m1 leaves the bucket")

        # And what it used is released (and stays, nobody deleted it)
        async def released() -> bool:
            return all([await finalizers(op, k, n) == [] for k, n in USED if k != "Migration"])

        await eventually(released, timeout=20, what="the canceled migration's objects released")


async def test_a_migration_of_a_plan_being_deleted_is_refused_and_stale_finalizers_go(
    nats_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    async with operated(nats_url, cluster, tmp_path) as op:
        # Given a Plan someone else keeps (their finalizer) while it is being deleted, and
        # a Hook left with Ferry's finalizer though no migration uses it
        *rest, plan = documents("ova", ["id-a"])
        plan["metadata"]["finalizers"] = ["example.com/keep"]
        stale = doc("Hook", "stale", {"command": ["true"]})
        stale["metadata"]["finalizers"] = [FINALIZER]
        for made in placed([*rest, plan, stale]):
            await op.api.create(made)
        await op.condition("Plan", "plan1")
        await op.api.delete("Plan", NS, "plan1")

        # When a Migration of that Plan is created
        await op.api.create(placed([migration("m2")])[0])

        # Then it is refused, saying why, and never started
        ready = await op.condition("Migration", "m2")

        async def refused() -> bool:
            ready.update(await op.condition("Migration", "m2"))
            return ready["status"] == "False"

        await eventually(refused, timeout=20, what="m2 is refused")
        assert ready["reason"] == "ReferenceBeingDeleted"
        assert "Plan 'plan1' is being deleted" in ready["message"]
        assert await op.bucket("Migration", "m2") is None
        assert "migration.started.v1" not in await op.events(runs_as("m2"))
        assert await finalizers(op, "Migration", "m2") == []
        assert await finalizers(op, "Plan", "plan1") == ["example.com/keep"]

        # And the Hook no running migration uses loses Ferry's finalizer
        async def unheld() -> bool:
            return await finalizers(op, "Hook", "stale") == []

        await eventually(unheld, timeout=20, what="the stale finalizer is removed")
