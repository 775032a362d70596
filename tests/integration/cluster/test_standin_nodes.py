"""The stand-in with two nodes: the scheduler spreads pods, and local volumes pin them.

A real scheduler scores nodes (LeastAllocated, the default topology spread) and puts
the next pod away from the busy ones; a claim on WaitForFirstConsumer storage is
provisioned on the node of the first pod that uses it and stays there. Two claims of
one VM first used by two different pods can so end on two nodes, and then nothing
that uses both (the VM's launcher pod) fits anywhere.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferry.platform.kubernetes.client import POD, PVC, VIRTUAL_MACHINE, KubeClient
from ferry.testing.cluster import resources
from ferry.testing.cluster.binder import SELECTED_NODE
from ferry.testing.cluster.cluster import Cluster

sys.path.insert(0, str(Path(__file__).parent))
from test_standin import IMAGE, NS, claim, phase, pod

NODES = ("node-1", "node-2")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    images = {IMAGE: {"PATH": "/usr/bin:/bin"}}
    classes = {"wffc": "WaitForFirstConsumer"}
    async with Cluster(tmp_path / "cluster", classes, images, NODES) as made:
        yield made


def two_disk_vm(name: str, claims: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "runStrategy": "Always",
            "template": {
                "spec": {
                    "domain": {
                        "machine": {"type": "q35"},
                        "memory": {"guest": "128Mi"},
                        "devices": {
                            "disks": [{"name": c, "disk": {"bus": "sata"}} for c in claims]
                        },
                    },
                    "terminationGracePeriodSeconds": 0,
                    "volumes": [
                        {"name": c, "persistentVolumeClaim": {"claimName": c}} for c in claims
                    ],
                }
            },
        },
    }


async def test_two_claims_first_used_by_two_pods_end_on_two_nodes_and_nothing_uses_both(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given two claims of one VM on WaitForFirstConsumer storage
    for name in ("root", "data"):
        await client.create(PVC, claim(name))
    # When each is first used by its own pod, both running at once
    for name in ("root", "data"):
        await client.create(POD, pod(f"fill-{name}", [name], "sleep 2"))
    filled = [
        await cluster.wait_for(resources.POD, NS, f"fill-{n}", lambda p: phase(p) == "Succeeded")
        for n in ("root", "data")
    ]
    # Then the scheduler spread them, and each claim was provisioned on its pod's node
    assert sorted(p["spec"]["nodeName"] for p in filled) == list(NODES)
    selected = set()
    for name in ("root", "data"):
        bound = await client.get(PVC, NS, name)
        assert bound is not None and phase(bound) == "Bound"
        selected.add(bound["metadata"]["annotations"][SELECTED_NODE])
    assert selected == set(NODES)

    # And a pod that uses both fits no node
    await client.create(POD, pod("both", ["root", "data"], "true"))
    stuck = await cluster.wait_for(
        resources.POD, NS, "both", lambda p: bool((p.get("status") or {}).get("conditions"))
    )
    assert phase(stuck) == "Pending" and not stuck["spec"].get("nodeName")
    assert "volume node affinity conflict" in stuck["status"]["conditions"][0]["message"]
    # And neither does a VirtualMachine on both: its instance fails saying why
    await client.create(VIRTUAL_MACHINE, two_disk_vm("vm", ["root", "data"]))
    vmi = await cluster.wait_for(
        resources.VMI, NS, "vm", lambda o: (o.get("status") or {}).get("phase") == "Failed"
    )
    assert vmi["status"]["reason"] == "Unschedulable"
    assert "root on node-" in vmi["status"]["conditions"][0]["message"]
