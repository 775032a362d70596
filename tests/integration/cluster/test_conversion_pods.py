"""The conversion-service's converter on the kubernetes platform: conversion pods.

The stand-in's kubelet really runs each pod (the host's virt-v2v is the conversion
image here). The fast tests hold the pod's side of the seam (links made inside the
pod, an output file read back from the log, a share mounted read-only); the slow
ones run the real virt-v2v in pods: an in-place run that fails and keeps its pod and
log, an eviction. Full conversions in pods are in the four-service e2e tests: an OVA on
an NFS share (``test_e2e_kubernetes.py``) and a vSphere VM read by captive nbdkits
inside the pod, with virt-inspector in a pod of its own
(``test_e2e_kubernetes_vsphere_flow3.py``).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import pytest

from ferry.conversion_service import v2v
from ferry.conversion_service.settings import ConversionSettings
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import VolumeRequest, VolumeState
from ferry.platform.workloads import Workload, WorkloadError
from ferry.proto import label
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import Disk, ProviderType, Vm, Volume, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

NS = "migrated"
MiB = 1 << 20
OWNER = {label.MIGRATION: "mig-1", label.VM: "vm-1"}
SHARE = "nfs://nfs.example/exports/ova"


async def bound(
    platform: KubernetesPlatform, capacities: list[int], mode: VolumeMode = VolumeMode.BLOCK
) -> list[VolumeState]:
    """Blank volumes of one VM (flow 3's DataVolumes), bound by pvcinit, in disk order."""
    for index, capacity in enumerate(capacities):
        target = VolumeTarget(disk_id=f"d{index}", storage_class="wffc", volume_mode=mode)
        await platform.ensure_volume(
            VolumeRequest(
                namespace=NS,
                migration="mig-1",
                vm="vm-1",
                disk_id=f"d{index}",
                capacity=capacity,
                target=target,
                source=VolumeSource.BLANK,
            )
        )
    states = await platform.bind_volumes(NS, "mig-1", "vm-1")
    return sorted(states, key=lambda state: state.disk_id)


def backing(cluster: Cluster, claim: str) -> Path:
    pvc = cluster.get(resources.PVC, NS, claim)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"])


def created_pods(cluster: Cluster, prefix: str) -> list[dict[str, Any]]:
    return [
        r.body
        for r in cluster.api.requests
        if r.method == "POST"
        and r.path.endswith("/pods")
        and r.body["metadata"]["name"].startswith(prefix)
    ]


def job(vm: Vm, volumes: list[Volume], mode: ConversionMode, **fields: Any) -> v2v.Job:
    return v2v.Job(
        migration="mig-1",
        vm_key="vm-1",
        mode=mode,
        inventory=vm,
        volumes=volumes,
        timeout_seconds=fields.pop("timeout_seconds", 1800),
        namespace=NS,
        **fields,
    )


# -- the pod's side of the seam (fast) ---------------------------------------------------


async def test_links_are_made_inside_the_pod_and_a_replaced_link_fails_the_workload(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a VM's Block claim, placed where a pod sees it
    [claim] = await bound(platform, [4 * MiB])
    placed = await platform.place_volumes(NS, [claim.to_proto()])
    assert placed[claim.name].disk == "/dev/block0" and placed[claim.name].block
    links = {"out/guest-sda": placed[claim.name].disk}

    def workload(script: str) -> Workload:
        return Workload(
            name="full-conversion",
            argv=["sh", "-c", script],
            volumes={claim.name: placed[claim.name].mount},
            workdir="/var/tmp/work",
            links=links,
            time_limit=30,
            grace=1,
            labels=OWNER,
            namespace=NS,
        )

    # When a command writes through the link the pod made
    log = io.BytesIO()
    write = "printf CONVERTED | dd of=out/guest-sda conv=notrunc status=none"
    assert await platform.run_workload(workload(write), log) == 0, log.getvalue()
    # Then the bytes are in the claim, and the link was never made on this host
    assert backing(cluster, claim.name).read_bytes()[:9] == b"CONVERTED"
    assert not Path("/var/tmp/work/out").exists()
    # And the pod runs as the image's non-root user, set explicitly (device ownership)
    [pod] = created_pods(cluster, "full-conversion")
    context = pod["spec"]["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == context["runAsGroup"] > 0

    # When a command replaces the link with a file (as virt-v2v would if it unlinked it)
    replace = "rm out/guest-sda && printf x > out/guest-sda"
    with pytest.raises(WorkloadError, match=r"out/guest-sda \(→ /dev/block0\) was replaced"):
        await platform.run_workload(workload(replace), io.BytesIO())


async def test_an_output_file_comes_back_from_the_pod_apart_from_its_log(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given a workload whose result is its standard output (virt-inspector's XML)
    output = tmp_path / "inspector.xml"
    script = "echo 'libguestfs: launched' >&2; printf '<operatingsystems>\\n</x>'"
    workload = Workload(
        name="virt-inspector",
        argv=["sh", "-c", script],
        time_limit=30,
        grace=1,
        labels=OWNER,
        namespace=NS,
        output=str(output),
    )
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    # When it runs as a pod
    log = io.BytesIO()
    assert await platform.run_workload(workload, log, on_line) == 0

    # Then the output file holds exactly its standard output, and the log only the rest
    assert output.read_bytes() == b"<operatingsystems>\n</x>"
    assert lines == ["libguestfs: launched"]
    assert b"operatingsystems" not in log.getvalue()


async def test_an_nfs_share_is_mounted_read_only_where_the_workload_reads_it(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given an export (a local directory standing for it) holding a package
    share = tmp_path / "share"
    share.mkdir()
    (share / "guest.ova").write_bytes(b"OVA")
    cluster.kubelet.exports["nfs.example:/exports/ova"] = share
    script = f"cat {share}/guest.ova; touch {share}/written 2>/dev/null && exit 3; exit 0"
    workload = Workload(
        name="full-conversion",
        argv=["sh", "-c", script],
        shares={str(share): SHARE},
        time_limit=30,
        grace=1,
        labels=OWNER,
        namespace=NS,
    )

    # When a pod reads it
    log = io.BytesIO()
    status = await platform.run_workload(workload, log)

    # Then it read the package and could not write the share
    assert status == 0, log.getvalue()
    assert log.getvalue() == b"OVA"
    assert not (share / "written").exists()
    [pod] = created_pods(cluster, "full-conversion")
    nfs = {"server": "nfs.example", "path": "/exports/ova", "readOnly": True}
    assert {"name": "share-0", "nfs": nfs} in pod["spec"]["volumes"]


# -- real virt-v2v in conversion pods (slow) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_an_in_place_conversion_pod_that_fails_keeps_its_pod_and_says_why(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given a VM whose claim is blank (nothing for virt-v2v-in-place to find)
    [claim] = await bound(platform, [64 * MiB])
    vm = _vm(64 * MiB)
    settings = ConversionSettings(work_dir=tmp_path / "work", kill_grace_seconds=3.0)
    (tmp_path / "work").mkdir()
    converter = v2v.Converter(settings, tmp_path / "data", platform)

    # When virt-v2v-in-place runs on it in a pod
    with pytest.raises(v2v.ConversionError) as failed:
        await converter.convert(job(vm, [claim.to_proto()], ConversionMode.IN_PLACE))

    # Then the reason is virt-v2v's (it read the disk the pod saw, and found no OS), the
    # log is kept, and the failed pod stays for its logs
    assert failed.value.reason.startswith("no operating system was found"), failed.value.reason
    assert failed.value.log is not None and failed.value.log.exists()
    assert b"virt-v2v-in-place" in failed.value.log.read_bytes()
    [pod] = cluster.store.list(resources.POD, NS)
    assert pod["status"]["phase"] == "Failed"
    assert pod["metadata"]["labels"][label.TEMPORARY] == "true"  # clean-up removes it
    # And the domain document named the disk where the pod sees it
    [created] = created_pods(cluster, "in-place-conversion")
    assert created["spec"]["containers"][0]["volumeDevices"][0]["devicePath"] == "/dev/block0"


@pytest.mark.timeout(120)
async def test_an_evicted_conversion_pod_is_lost_not_failed(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given an in-place conversion running in a pod (no KVM probe: it is stopped early)
    [claim] = await bound(platform, [64 * MiB])
    work = tmp_path / "work"
    settings = ConversionSettings(work_dir=work, kill_grace_seconds=3.0, accel="tcg")
    (tmp_path / "work").mkdir()
    converter = v2v.Converter(settings, tmp_path / "data", platform)
    running = asyncio.create_task(
        converter.convert(job(_vm(64 * MiB), [claim.to_proto()], ConversionMode.IN_PLACE))
    )
    name = await _running_pod(cluster, "in-place-conversion")

    # When the node evicts it
    cluster.kubelet.evict(NS, name, "The node was low on resource: ephemeral-storage.")

    # Then the run is lost (the handler retries it), not a conversion that failed
    with pytest.raises(v2v.ConversionLost, match="Evicted"):
        await running


def _vm(capacity: int) -> Vm:
    return Vm(
        id="vm-1",
        name="blank",
        provider_type=ProviderType.OVA,
        disks=[Disk(id="d0", name="disk0", capacity=capacity)],
    )


async def _running_pod(cluster: Cluster, prefix: str) -> str:
    async with asyncio.timeout(60):
        while True:
            for pod in cluster.store.list(resources.POD, NS):
                name = str(pod["metadata"]["name"])
                if name.startswith(prefix) and (pod.get("status") or {}).get("phase") == "Running":
                    return name
            await asyncio.sleep(0.05)
