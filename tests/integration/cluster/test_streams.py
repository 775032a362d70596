"""Streamed reads from the API server: pod logs and watches.

A transfer pod's log is read from its end: the volume-service polls each transfer
pod's log every few seconds for its progress, ledger and result; a copy of hours writes
thousands of lines, and hundreds of copies run at once. It asks the API server for the
last lines only (``tailLines``), which the stand-in serves as the kubelet does.

A streamed answer that is an error is an error: kubernetes-asyncio does not check the
status of a response it does not read whole, so a pod's "waiting to start" once came
back as its log and a refused watch as an event; :meth:`KubeClient.stream` checks it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ferry.platform.kubernetes import fill, fillpod
from ferry.platform.kubernetes.client import POD, ClusterError, KubeClient, NotFound, Resource
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

NS = "migrated"
LINES = 1000


def printing_pod(name: str, program: str) -> dict[str, Any]:
    container = {"name": "main", "image": "ferry/ferry:test", "command": ["python3", "-c", program]}
    spec = {"restartPolicy": "Never", "nodeName": "node-1", "containers": [container]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
            "spec": spec}  # fmt: skip


async def ended(cluster: Cluster, name: str) -> None:
    for _ in range(600):
        pod = cluster.get(resources.POD, NS, name)
        if pod is not None and fillpod.phase(pod) in ("Succeeded", "Failed"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"pod {name} did not end")


async def test_a_pods_log_is_read_from_its_last_lines(cluster: Cluster, client: KubeClient) -> None:
    # Given a pod that printed a thousand progress lines, then its ledger and its result
    program = (
        "import json\n"
        f"for i in range({LINES}): print(json.dumps({{'event': 'progress', 'done': i, "
        f"'total': {LINES}}}))\n"
        "print(json.dumps({'event': 'checkpoint', 'state': {'round': 'r', 'done': 3, "
        "'chain': 'ab' * 32}}))\n"
        "print(json.dumps({'event': 'done', 'bytes_copied': 1, 'seconds': 0.1, "
        "'source': {'algorithm': 'a', 'digest': 'd', 'bytes': 1}, "
        "'target': {'algorithm': 'a', 'digest': 'd', 'bytes': 1}}))\n"
    )
    await client.create(POD, printing_pod("talker", program))
    await ended(cluster, "talker")
    cluster.api.requests.clear()

    # When the platform reads it back
    text = await fillpod.log(client, NS, "talker")
    found = await fillpod.lines(client, NS, "talker")

    # Then it asked for the last lines only, and got them: the first ones are not there
    asked = [r.query for r in cluster.api.requests if r.path.endswith("/log")]
    assert asked and all(q.get("tailLines") == str(fillpod.TAIL_LINES) for q in asked), asked
    assert len(text.splitlines()) == fillpod.TAIL_LINES
    progress = [x.done for x in found if isinstance(x, fill.Progress)]
    assert progress[0] == LINES - fillpod.TAIL_LINES + 2 and progress[-1] == LINES - 1
    # and the ledger and the result, its last lines, are read
    [ledger] = [x for x in found if isinstance(x, fill.Checkpoint)]
    assert ledger.state.done == 3
    assert (await fillpod.done(client, NS, "talker")).bytes_copied == 1


@pytest.mark.parametrize("tail", ["-1", "x"])
async def test_the_stand_in_refuses_a_tail_that_is_not_a_count(
    cluster: Cluster, client: KubeClient, tail: str
) -> None:
    await client.create(POD, printing_pod("quiet", "print('hello')"))
    await ended(cluster, "quiet")
    with pytest.raises(ClusterError) as refused:
        await client.stream(POD.path(NS, "quiet", "log"), "logs", [("tailLines", tail)])
    assert refused.value.status == 400 and "tailLines" in refused.value.reason


async def test_the_log_of_a_pod_not_started_is_an_error_not_its_log(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a pod no node can run yet: the claim it mounts does not exist
    pod: dict[str, Any] = printing_pod("waiting", "print('hello')")
    del pod["spec"]["nodeName"]
    pod["spec"]["volumes"] = [{"name": "d", "persistentVolumeClaim": {"claimName": "none"}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/d"}]
    await client.create(POD, pod)
    await asyncio.sleep(0.5)
    assert fillpod.phase(cluster.get(resources.POD, NS, "waiting")) in ("", "Pending")
    # When its log is read / Then the API server's refusal is the error, with its message
    with pytest.raises(ClusterError) as refused:
        await fillpod.log(client, NS, "waiting")
    assert refused.value.status == 400 and "waiting to start" in refused.value.reason
    # and a pod that is not there is not found
    with pytest.raises(NotFound):
        await fillpod.lines(client, NS, "absent")


async def test_a_watch_the_api_server_refuses_raises_instead_of_yielding_its_status(
    client: KubeClient,
) -> None:
    # Given a resource the API server does not serve
    unknown = Resource("example.com", "v1", "gadgets", "Gadget")
    # When it is watched / Then the 404 is the error, no event comes out of its Status
    seen: list[tuple[str, dict[str, object]]] = []
    with pytest.raises(NotFound):
        async for event in client.changes(unknown, NS, "1", 2):
            seen.append(event)
    with pytest.raises(NotFound):
        async for event in client.watch(unknown, NS, "g", 2):
            seen.append(event)
    assert seen == []
