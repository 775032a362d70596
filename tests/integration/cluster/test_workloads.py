"""Workloads as pods (the conversion pod), run for real by the stand-in's kubelet."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path

import pytest

from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import VolumeRequest, VolumeState
from ferry.platform.workloads import Workload, WorkloadLost, WorkloadTimedOut
from ferry.proto import label
from ferry.proto.inventory import VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

NS = "migrated"
MiB = 1 << 20
PASSWORD = b"correct horse battery staple"
DIGEST = hashlib.sha256(PASSWORD).hexdigest()
OWNER = {label.MIGRATION: "mig-1", label.VM: "vm-1"}


async def volumes(platform: KubernetesPlatform) -> list[VolumeState]:
    """A Block and a Filesystem blank volume of one VM, bound by pvcinit."""
    for disk, mode in (("d1", VolumeMode.BLOCK), ("d2", VolumeMode.FILESYSTEM)):
        target = VolumeTarget(disk_id=disk, storage_class="wffc", volume_mode=mode)
        await platform.ensure_volume(
            VolumeRequest(
                namespace=NS,
                migration="mig-1",
                vm="vm-1",
                disk_id=disk,
                capacity=4 * MiB,
                target=target,
                source=VolumeSource.BLANK,
            )
        )
    return await platform.bind_volumes(NS, "mig-1", "vm-1")


def backing(cluster: Cluster, claim: str) -> Path:
    pvc = cluster.get(resources.PVC, NS, claim)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"])


def workload(script: str, claims: dict[str, str], **fields: object) -> Workload:
    return Workload(
        name="full-conversion",
        argv=["sh", "-c", script],
        env={"LANG": "C"},
        volumes=claims,
        workdir="/var/tmp/work",
        time_limit=fields.pop("time_limit", 30),  # type: ignore[arg-type]
        grace=1,
        labels=OWNER,
        namespace=NS,
        secret_files={"password": PASSWORD},
        secret_dir="/etc/ferry/secrets",
        **fields,  # type: ignore[arg-type]
    )


async def test_a_workload_pod_writes_its_claims_reads_its_secret_file_and_streams_lines(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a VM's Block and Filesystem claims, bound
    block, filesystem = sorted(await volumes(platform), key=lambda v: v.volume_mode)
    assert block.volume_mode == VolumeMode.BLOCK
    script = (
        # the command compares a digest: the password itself is never on a command line
        f'test "$(sha256sum < /etc/ferry/secrets/password)" = "{DIGEST}  -" || exit 9; '
        "printf 'BLOCK' | dd of=/dev/block0 conv=notrunc status=none; "
        "printf 'FILE' > /mnt/disks/1/disk.img; "
        "touch here; echo '  (10.00/100%)'; printf '  (100.00/100%%)\\r'; echo done"
    )
    claims = {block.name: "/dev/block0", filesystem.name: "/mnt/disks/1"}
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    # When it runs as a pod
    log = io.BytesIO()
    status = await platform.run_workload(workload(script, claims), log, on_line)

    # Then it exited 0, wrote both claims where the platform put them, and its lines came
    assert status == 0, log.getvalue()
    assert backing(cluster, block.name).read_bytes()[:5] == b"BLOCK"
    assert (backing(cluster, filesystem.name) / "disk.img").read_bytes()[:4] == b"FILE"
    assert lines == ["  (10.00/100%)", "  (100.00/100%)", "done"]
    # And the password was in the Secret only: not in the pod's spec, env or command
    [pod] = [
        r.body
        for r in cluster.api.requests
        if r.method == "POST"
        and r.path.endswith("/pods")
        and r.body["metadata"]["name"].startswith("full-conversion")
    ]
    assert b"correct horse" not in json.dumps(pod).encode()
    container = pod["spec"]["containers"][0]
    assert container["volumeDevices"] == [{"name": "disk-0", "devicePath": "/dev/block0"}]
    assert {"name": "secrets", "mountPath": "/etc/ferry/secrets", "readOnly": True} in container[
        "volumeMounts"
    ]
    # And nothing of it is left: pod and Secret gone
    assert cluster.store.list(resources.POD, NS) == []
    assert cluster.store.list(resources.SECRET, NS) == []


async def test_a_failing_workload_returns_its_exit_code_and_its_pod_stays_for_its_logs(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a bound VM and a command that fails
    [first, *_] = await volumes(platform)
    log = io.BytesIO()

    # When it runs
    where = "/mnt/d" if first.volume_mode == VolumeMode.FILESYSTEM else "/dev/d"
    script = "echo 'virt-v2v: error: no root device'; exit 1"
    status = await platform.run_workload(workload(script, {first.name: where}), log)

    # Then its exit code comes back, its output is in the log, the failed pod is kept
    # (its termination message holds the log's tail) and its Secret is gone
    assert status == 1
    assert b"no root device" in log.getvalue()
    [pod] = cluster.store.list(resources.POD, NS)
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert "no root device" in terminated["message"]
    assert cluster.store.list(resources.SECRET, NS) == []


async def test_an_evicted_workload_is_lost_with_the_kubelets_reason(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a long workload running as a pod
    running = asyncio.create_task(platform.run_workload(workload("sleep 60", {}), io.BytesIO()))
    name = await _running_pod(cluster)

    # When the node evicts it
    cluster.kubelet.evict(NS, name, "The node was low on resource: memory.")

    # Then the run is lost, saying so, not an exit code of the command's own
    with pytest.raises(WorkloadLost, match=r"Evicted.*low on resource"):
        await running


async def test_a_workload_over_its_time_limit_is_stopped(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a workload that would run for a minute, with a two-second limit
    with pytest.raises(WorkloadTimedOut):
        await platform.run_workload(workload("sleep 60", {}, time_limit=2), io.BytesIO())

    # Then nothing of it runs: its pod ended (kept for its logs) or is gone
    phases = {(p.get("status") or {}).get("phase") for p in cluster.store.list(resources.POD, NS)}
    assert phases <= {"Failed"}
    assert not cluster.kubelet.running()


async def test_cancelling_a_workload_deletes_its_pod_before_the_cancel_goes_on(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a running workload
    running = asyncio.create_task(platform.run_workload(workload("sleep 60", {}), io.BytesIO()))
    await _running_pod(cluster)

    # When it is cancelled
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    # Then the pod is gone already
    assert cluster.store.list(resources.POD, NS) == []


async def _running_pod(cluster: Cluster) -> str:
    async with asyncio.timeout(10):
        while True:
            for pod in cluster.store.list(resources.POD, NS):
                if (pod.get("status") or {}).get("phase") == "Running":
                    return str(pod["metadata"]["name"])
            await asyncio.sleep(0.05)
