"""The cluster stand-in itself: it must refuse and withhold what a real cluster would.

Each test drives the stand-in through kubernetes-asyncio (the client Ferry uses),
so what passes here is what Ferry's requests would meet.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ferry.platform.kubernetes.client import POD, PV, PVC, ClusterError, KubeClient, NotFound
from ferry.testing.cluster import resources
from ferry.testing.cluster.binder import SELECTED_NODE
from ferry.testing.cluster.cluster import Cluster

NS = "standin"
IMAGE = "ferry/tools:test"


def claim(name: str, mode: str = "Filesystem", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": mode,
            "storageClassName": "wffc",
            "resources": {"requests": {"storage": "1048576"}},
            **spec,
        },
    }


def pod(name: str, claims: list[str], script: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["sh", "-c", script],
                    "volumeMounts": [
                        {"name": f"v{i}", "mountPath": f"/mnt/disks/{i}"}
                        for i in range(len(claims))
                    ],
                    **container,
                }
            ],
            "volumes": [
                {"name": f"v{i}", "persistentVolumeClaim": {"claimName": c}}
                for i, c in enumerate(claims)
            ],
        },
    }


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    classes = {"wffc": "WaitForFirstConsumer", "immediate": "Immediate"}
    images = {IMAGE: {"PATH": "/usr/bin:/bin"}}
    async with Cluster(tmp_path / "cluster", classes, images) as made:
        yield made


def phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "")


async def test_a_waitforfirstconsumer_claim_binds_only_for_a_scheduled_pod(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a claim on WaitForFirstConsumer storage
    await client.create(PVC, claim("data"))
    await asyncio.sleep(0.5)

    # Then nothing binds it, however long it waits
    alone = await client.get(PVC, NS, "data")
    assert alone is not None and phase(alone) == "Pending"
    assert SELECTED_NODE not in (alone["metadata"].get("annotations") or {})

    # When a pod uses it
    await client.create(POD, pod("writer", ["data"], "echo hello > /mnt/disks/0/file"))
    done = await cluster.wait_for(resources.POD, NS, "writer", lambda p: phase(p) == "Succeeded")

    # Then the scheduler chose a node for the claim, it was bound, the pod ran on it
    bound = await client.get(PVC, NS, "data")
    assert bound is not None and phase(bound) == "Bound"
    assert bound["metadata"]["annotations"][SELECTED_NODE] == done["spec"]["nodeName"]
    volume = cluster.get(resources.PV, "", bound["spec"]["volumeName"])
    assert volume is not None
    assert (Path(volume["spec"]["hostPath"]["path"]) / "file").read_text() == "hello\n"


async def test_leaving_a_populator_claim_out_of_the_binding_pod_leaves_it_without_a_node(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a blank claim and a populator claim of one VM, both WaitForFirstConsumer
    ref = {"apiGroup": "populators.ferry.dev", "kind": "FerryVolumePopulator", "name": "p"}
    await client.create(PVC, claim("blank"))
    await client.create(PVC, claim("populated", dataSourceRef=ref))

    # When a pvcinit-like pod mounts only the blank one
    await client.create(POD, pod("pvcinit", ["blank"], "true"))
    await cluster.wait_for(resources.POD, NS, "pvcinit", lambda p: phase(p) == "Succeeded")
    await asyncio.sleep(0.5)

    # Then the populator claim never gets a selected node: a populator that follows
    # lib-volume-populator waits for that annotation, so the migration would hang
    left = await client.get(PVC, NS, "populated")
    assert left is not None and phase(left) == "Pending"
    assert SELECTED_NODE not in (left["metadata"].get("annotations") or {})

    # When a pod mounts it too, it gets the node — and still does not bind by itself:
    # the provisioner leaves a populator's claim to the populator
    await client.create(POD, pod("both", ["blank", "populated"], "true"))
    chosen = await cluster.wait_for(
        resources.PVC,
        NS,
        "populated",
        lambda c: SELECTED_NODE in (c["metadata"].get("annotations") or {}),
    )
    await asyncio.sleep(0.3)
    assert phase(cluster.get(resources.PVC, NS, "populated") or {}) == "Pending"
    assert chosen["spec"].get("volumeName") is None


async def test_a_volume_rebound_by_claimref_binds_the_target_and_loses_the_prime(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a populator's target claim and a bound prime claim on the same node
    ref = {"apiGroup": "populators.ferry.dev", "kind": "FerryVolumePopulator", "name": "p"}
    await client.create(PVC, claim("target", dataSourceRef=ref, storageClassName="immediate"))
    await client.create(PVC, claim("prime", storageClassName="immediate"))
    prime = await cluster.wait_for(resources.PVC, NS, "prime", lambda c: phase(c) == "Bound")
    target = await client.get(PVC, NS, "target")
    assert target is not None and phase(target) == "Pending"

    # When the populator points the prime's volume at the target (lib-volume-populator)
    volume = cluster.get(resources.PV, "", prime["spec"]["volumeName"])
    assert volume is not None
    meta = target["metadata"]
    patch = {"spec": {"claimRef": {"namespace": NS, "name": "target", "uid": meta["uid"]}}}
    await client.patch(PV, "", volume["metadata"]["name"], patch)

    # Then the target binds to that volume and the prime is Lost
    bound = await cluster.wait_for(resources.PVC, NS, "target", lambda c: phase(c) == "Bound")
    assert bound["spec"]["volumeName"] == volume["metadata"]["name"]
    lost = await cluster.wait_for(resources.PVC, NS, "prime", lambda c: phase(c) == "Lost")
    assert lost["spec"]["volumeName"] == volume["metadata"]["name"]


async def test_the_kubelet_reports_exit_code_message_and_keeps_secrets_in_files(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a Secret and a pod that reads it from a file and fails
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": NS},
        "data": {"password": base64.b64encode(b"s3cret").decode()},
    }
    cluster.create(resources.SECRET, secret)
    script = (
        'test "$(cat /etc/ferry/creds/password)" = s3cret && echo progress 42; '
        "echo 'disk full' > /dev/termination-log; exit 3"
    )
    spec = pod("failing", [], script)
    spec["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "creds", "mountPath": "/etc/ferry/creds", "readOnly": True}
    ]
    spec["spec"]["volumes"] = [{"name": "creds", "secret": {"secretName": "creds"}}]

    # When it runs
    await client.create(POD, spec)
    done = await cluster.wait_for(resources.POD, NS, "failing", lambda p: phase(p) == "Failed")

    # Then exit code and termination message are on its status, its log holds its output
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    assert terminated["reason"] == "Error"
    assert terminated["message"] == "disk full\n"
    log, _ = await cluster.kubelet.logs(NS, "failing")
    assert log == b"progress 42\n"


async def test_a_wrong_spec_or_unknown_kind_is_refused_as_a_cluster_refuses_it(
    cluster: Cluster, client: KubeClient
) -> None:
    # A field no API defines
    bad = claim("typo")
    bad["spec"]["storageClass"] = "wffc"
    with pytest.raises(ClusterError) as refused:
        await client.create(PVC, bad)
    assert refused.value.status == 422

    # A claim's spec changed after create
    await client.create(PVC, claim("fixed"))
    with pytest.raises(ClusterError) as immutable:
        await client.patch(PVC, NS, "fixed", {"spec": {"storageClassName": "immediate"}})
    assert immutable.value.status == 422

    # A custom resource whose CRD is not installed
    from ferry.platform.kubernetes.objects import POPULATOR

    with pytest.raises(NotFound):
        await client.list(POPULATOR, NS, {})

    # A Block claim mounted as a directory: the pod never starts
    await client.create(PVC, claim("raw", mode="Block", storageClassName="immediate"))
    await client.create(POD, pod("wrong", ["raw"], "true"))
    waiting = await cluster.wait_for(
        resources.POD,
        NS,
        "wrong",
        lambda p: (
            "waiting"
            in ((p.get("status") or {}).get("containerStatuses") or [{}])[0].get("state", {})
        ),
    )
    state = waiting["status"]["containerStatuses"][0]["state"]["waiting"]
    assert "volumeDevices" in state["message"]


async def test_a_read_only_root_filesystem_refuses_writes_outside_the_pods_volumes(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given two pods with a read-only root filesystem and an emptyDir scratch:
    # one writes to the machine's /tmp, the other to its scratch
    def scratch_pod(name: str, where: str) -> dict[str, Any]:
        spec = pod(
            name, [], f"echo x > {where}/probe", securityContext={"readOnlyRootFilesystem": True}
        )
        spec["spec"]["containers"][0]["volumeMounts"] = [
            {"name": "scratch", "mountPath": "/var/tmp/scratch"}
        ]
        spec["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
        return spec

    # When both run
    await client.create(POD, scratch_pod("to-tmp", "/tmp"))
    await client.create(POD, scratch_pod("to-scratch", "/var/tmp/scratch"))
    refused = await cluster.wait_for(
        resources.POD, NS, "to-tmp", lambda p: phase(p) in ("Failed", "Succeeded")
    )
    allowed = await cluster.wait_for(
        resources.POD, NS, "to-scratch", lambda p: phase(p) in ("Failed", "Succeeded")
    )

    # Then the write to the root filesystem fails as in a cluster; the scratch takes it
    assert phase(refused) == "Failed"
    log, _ = await cluster.kubelet.logs(NS, "to-tmp")
    assert b"Read-only file system" in log
    assert phase(allowed) == "Succeeded"


async def test_a_pod_force_deleted_and_made_again_under_its_name_is_a_new_pod(
    cluster: Cluster, client: KubeClient
) -> None:
    # Given a pod whose process ignores SIGTERM for a moment, force-deleted while it runs
    # (grace 0: the API object goes at once, the process is still ending)
    old = pod("again", [], "trap 'sleep 1; exit 7' TERM; echo old; while :; do sleep 0.1; done")
    await client.create(POD, old)
    await cluster.wait_for(resources.POD, NS, "again", lambda p: phase(p) == "Running")
    await client.delete(POD, NS, "again", grace_seconds=0)
    # When a new pod is made under the same name at once
    await client.create(POD, pod("again", [], "echo new; exit 0"))
    # Then the new pod runs its own command and ends with its own outcome, not the old
    # process's exit code
    done = await cluster.wait_for(
        resources.POD, NS, "again", lambda p: phase(p) in ("Succeeded", "Failed")
    )
    terminated = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (phase(done), terminated["exitCode"]) == ("Succeeded", 0), done["status"]
    log, ended = await cluster.kubelet.logs(NS, "again")
    assert (log, ended) == (b"new\n", True)
