"""The stand-in's finalizers, as the API server's registry keeps them: a DELETE of an
object with finalizers only marks it (deletionTimestamp, deletionGracePeriodSeconds 0)
and answers 200 with it; the watch sees that as MODIFIED, and the object goes (DELETED)
with the update that empties its finalizers; none may be added once it is being
deleted, and an update can neither set nor clear the deletion fields."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from ferry.platform import crdgen
from ferry.platform.kubernetes.client import ClusterError, KubeClient, Resource
from ferry.testing.cluster.cluster import Cluster

NS = "standin"
HOOK = Resource("ferry.dev", "v1alpha1", "hooks", "Hook")
CONFIG_MAP = Resource("", "v1", "configmaps", "ConfigMap")
HELD = "ferry.dev/in-use"


def hook(name: str, finalizers: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Hook",
        "metadata": {"name": name, "namespace": NS, "finalizers": finalizers},
        "spec": {"command": ["true"]},
    }


async def http_delete(cluster: Cluster, path: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.delete(cluster.url + path) as answer:
        return answer.status, await answer.json()


async def watched(
    client: KubeClient, resource: Resource, since: str, count: int
) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(10):
        async for event in client.changes(resource, NS, since, 10):
            if event[0] != "BOOKMARK":
                got.append(event)
            if len(got) == count:
                break
    return got


async def test_a_deleted_object_with_finalizers_stays_until_an_update_empties_them(
    cluster: Cluster, client: KubeClient
) -> None:
    [crd] = [c for c in crdgen.crds() if c["spec"]["names"]["kind"] == "Hook"]
    cluster.install_crd(crd)
    # Given a custom resource holding two finalizers
    made = await client.create(HOOK, hook("h", [HELD, "example.com/other"]))
    since = made["metadata"]["resourceVersion"]
    path = HOOK.path(NS, "h")

    # When it is deleted
    status, answer = await http_delete(cluster, path)

    # Then the answer is 200 with the object, marked for deletion with grace 0, and it stays
    assert status == 200, answer
    marked = answer["metadata"]
    assert marked["deletionTimestamp"] and marked["deletionGracePeriodSeconds"] == 0
    assert marked["finalizers"] == [HELD, "example.com/other"]
    assert marked["generation"] == made["metadata"]["generation"] + 1
    there = await client.get(HOOK, NS, "h")
    assert there is not None and there["metadata"]["deletionTimestamp"]
    # And a second DELETE changes nothing
    status, again = await http_delete(cluster, path)
    assert status == 200 and again["metadata"]["resourceVersion"] == marked["resourceVersion"]

    # And no finalizer may be added now (422), while an update that leaves the deletion
    # fields out keeps them (an update never clears them)
    with pytest.raises(ClusterError, match="no new finalizers can be added") as refused:
        await client.replace(
            HOOK, {**there, "metadata": {**there["metadata"], "finalizers": [HELD, "x.io/new"]}}
        )
    assert refused.value.status == 422
    dropped = {
        k: v
        for k, v in there["metadata"].items()
        if k not in ("deletionTimestamp", "deletionGracePeriodSeconds", "finalizers")
    }
    one_left = await client.replace(HOOK, {**there, "metadata": {**dropped, "finalizers": [HELD]}})
    assert one_left["metadata"]["deletionTimestamp"] == marked["deletionTimestamp"]
    assert one_left["metadata"]["deletionGracePeriodSeconds"] == 0
    assert await client.get(HOOK, NS, "h") is not None

    # When the last finalizer is removed
    await client.replace(HOOK, {**one_left, "metadata": {**one_left["metadata"], "finalizers": []}})

    # Then the object is gone, and a watch saw: marked (MODIFIED), updated, then DELETED
    assert await client.get(HOOK, NS, "h") is None
    events = await watched(client, HOOK, since, 3)
    assert [t for t, _ in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    assert events[0][1]["metadata"]["deletionTimestamp"] == marked["deletionTimestamp"]
    assert events[2][1]["metadata"].get("finalizers") in (None, [])


async def test_an_update_cannot_set_a_deletion_and_an_object_without_finalizers_goes_at_once(
    cluster: Cluster, client: KubeClient
) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": NS}}
    made = await client.create(CONFIG_MAP, config)
    # An update that sets a deletionTimestamp (only a DELETE does) is refused
    stamped = {
        **made,
        "metadata": {**made["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"},
    }
    with pytest.raises(ClusterError, match="deletionTimestamp") as refused:
        await client.replace(CONFIG_MAP, stamped)
    assert refused.value.status == 422
    # And without finalizers a DELETE removes the object at once (a watch sees DELETED)
    since = made["metadata"]["resourceVersion"]
    status, _ = await http_delete(cluster, CONFIG_MAP.path(NS, "c"))
    assert status == 200
    assert await client.get(CONFIG_MAP, NS, "c") is None
    [(kind, _)] = await watched(client, CONFIG_MAP, since, 1)
    assert kind == "DELETED"
