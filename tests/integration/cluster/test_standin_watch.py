"""The stand-in's watches and status subresource, as operator mode meets them upstream:
a watch resumes from a resourceVersion, an expired one is 410 Gone, bookmarks move a
quiet watch on, and a status written with a stale resourceVersion is a 409."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferry.platform import crdgen
from ferry.platform.kubernetes.client import AlreadyExists, Gone, KubeClient, Resource
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

NS = "standin"
CONFIG_MAP = Resource("", "v1", "configmaps", "ConfigMap")
HOOK = Resource("ferry.dev", "v1alpha1", "hooks", "Hook")


def config(name: str, value: str = "1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS},
        "data": {"value": value},
    }


async def collect(
    client: KubeClient, since: str, count: int, seconds: float = 10, bookmarks: bool = False
) -> list[tuple[str, dict[str, Any]]]:
    got: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(seconds):
        async for event in client.changes(CONFIG_MAP, NS, since, seconds):
            if event[0] == "BOOKMARK" and not bookmarks:
                continue
            got.append(event)
            if len(got) == count:
                break
    return got


async def test_a_watch_resumes_after_its_resource_version_and_gets_410_once_compacted(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a listed collection and changes made after the list
    await client.create(CONFIG_MAP, config("a"))
    items, listed = await client.list_all(CONFIG_MAP, NS)
    assert [i["metadata"]["name"] for i in items] == ["a"]
    await client.create(CONFIG_MAP, config("b"))
    await client.delete(CONFIG_MAP, NS, "a")

    # When a watch starts from the list's resourceVersion
    events = await collect(client, listed, 2)

    # Then it gets exactly the changes after it, in order (nothing the list had)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("ADDED", "b"), ("DELETED", "a")]
    last = events[-1][1]["metadata"]["resourceVersion"]

    # And once the server compacted its history, a watch from before that is 410 Gone
    cluster.store.compact()
    with pytest.raises(Gone, match="too old resource version"):
        await collect(client, listed, 1)
    # while one from the version compacted at (the last change seen) goes on
    await client.create(CONFIG_MAP, config("c"))
    [(kind, obj)] = await collect(client, last, 1)
    assert (kind, obj["metadata"]["name"]) == ("ADDED", "c")


async def test_a_quiet_watch_gets_bookmarks_and_a_broken_one_resumes_without_a_gap(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a watch that allows bookmarks, and a change only in another namespace
    _, listed = await client.list_all(CONFIG_MAP, NS)
    cluster.api.bookmark_seconds = 0.1
    elsewhere = config("other")
    elsewhere["metadata"]["namespace"] = "elsewhere"
    await client.create(CONFIG_MAP, elsewhere)
    [(kind, mark)] = await collect(client, listed, 1, bookmarks=True)
    # Then a BOOKMARK carries the current resourceVersion, and nothing else
    assert kind == "BOOKMARK" and set(mark["metadata"]) == {"resourceVersion"}
    assert int(mark["metadata"]["resourceVersion"]) == cluster.store.revision

    # When a watch is broken after one change, and another is made while none is open
    seen: list[str] = []
    last = mark["metadata"]["resourceVersion"]

    async def follow() -> None:
        nonlocal last
        async for kind, obj in client.changes(CONFIG_MAP, NS, last, 10):
            last = obj["metadata"]["resourceVersion"]
            if kind != "BOOKMARK":
                seen.append(obj["metadata"]["name"])

    watching = asyncio.create_task(follow())
    await client.create(CONFIG_MAP, config("x"))
    async with asyncio.timeout(10):
        while seen != ["x"]:
            await asyncio.sleep(0.02)
    cluster.api.break_watches()
    cluster.store.create(resources.CONFIG_MAP, config("y"))
    await asyncio.wait_for(watching, 10)
    assert seen == ["x"]
    # Then a watch resumed from the last version seen gets what the break lost
    [(kind, obj)] = await collect(client, last, 1)
    assert (kind, obj["metadata"]["name"]) == ("ADDED", "y")


async def test_a_status_written_with_a_stale_resource_version_is_a_conflict(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a Hook (a Ferry CRD with a status subresource)
    [crd] = [c for c in crdgen.crds() if c["spec"]["names"]["kind"] == "Hook"]
    cluster.install_crd(crd)
    hook = {
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "Hook",
        "metadata": {"name": "h", "namespace": NS},
        "spec": {"command": ["true"]},
    }
    made = await client.create(HOOK, hook)
    # When its status is written with its resourceVersion, then again with the old one
    status = {"conditions": [{"type": "Ready", "status": "True"}]}
    written = await client.replace(HOOK, {**made, "status": status}, "status")
    # Then the first write took (the spec unchanged), the second is refused: it was stale
    assert written["status"] == status and written["spec"] == made["spec"]
    with pytest.raises(AlreadyExists, match="has been modified"):
        await client.replace(HOOK, {**made, "status": {}}, "status")
    # and a status sent to the main resource is ignored there, as upstream
    again = await client.replace(HOOK, {**written, "status": {}})
    assert again["status"] == status
