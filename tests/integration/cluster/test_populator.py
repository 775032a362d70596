"""Flow 2 on WaitForFirstConsumer storage: Ferry's populator controller, as upstream does it.

The stand-in's binder leaves a populator claim to its populator and binds it only
through a PersistentVolume whose ``claimRef`` names it; its kubelet really runs the
populator pod (Ferry's copy engine) on the node pvcinit chose.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from pathlib import Path

import pytest

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import populator
from ferry.platform.kubernetes.binding import SELECTED_NODE
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import Phase, VolumeError, VolumeRequest, VolumeState
from ferry.proto import label
from ferry.proto.inventory import DiskFormat, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

NS = "migrated"
MiB = 1 << 20


def source_disk(tmp_path: Path, size: int = 4 * MiB) -> tuple[Path, str]:
    path = tmp_path / "source.raw"
    data = bytearray(size)
    data[:13] = b"populated-ok!"
    data[2 * MiB : 2 * MiB + 6] = b"middle"
    path.write_bytes(bytes(data))
    return path, hashlib.sha256(bytes(data)).hexdigest()


async def populator_volume(platform: KubernetesPlatform, mode: VolumeMode) -> VolumeState:
    target = VolumeTarget(disk_id="d1", storage_class="wffc", volume_mode=mode)
    volume = await platform.ensure_volume(
        VolumeRequest(
            namespace=NS,
            migration="mig-1",
            vm="vm-1",
            vm_name="web",
            disk_id="d1",
            capacity=4 * MiB,
            target=target,
            source=VolumeSource.POPULATOR,
        )
    )
    await platform.bind_volumes(NS, "mig-1", "vm-1")  # AllocateDisks: the selected node
    return volume


def backing(cluster: Cluster, claim: str) -> Path:
    pvc = cluster.get(resources.PVC, NS, claim)
    assert pvc is not None and pvc["status"]["phase"] == "Bound"
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"])


@pytest.mark.parametrize("mode", [VolumeMode.BLOCK, VolumeMode.FILESYSTEM])
async def test_a_populator_volume_on_waitforfirstconsumer_ends_bound_with_the_bytes(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path, mode: VolumeMode
) -> None:
    # Given a populator claim placed by pvcinit on WaitForFirstConsumer storage
    path, digest = source_disk(tmp_path)
    volume = await populator_volume(platform, mode)
    target = cluster.get(resources.PVC, NS, volume.name)
    assert target is not None and target["status"]["phase"] == "Pending"
    node = target["metadata"]["annotations"][SELECTED_NODE]
    prime = f"populate-{target['metadata']['uid']}"
    seen: list[str] = []

    async def watch() -> None:  # what the controller made on the way
        while True:
            pod = cluster.get(resources.POD, NS, prime)
            claim = cluster.get(resources.PVC, NS, prime)
            if pod is not None and pod["spec"].get("nodeName") and "pod" not in seen:
                seen.append("pod")
                assert pod["spec"]["nodeName"] == node
            if claim is not None and "prime" not in seen:
                seen.append("prime")
                assert claim["metadata"]["annotations"][SELECTED_NODE] == node
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())

    # When the volume-service populates it
    try:
        copy = await platform.populate(volume, ImageRef(path=str(path), format=DiskFormat.RAW))
    finally:
        watcher.cancel()

    # Then the target claim is Bound to the prime's volume with the source's bytes
    assert {"prime", "pod"} <= set(seen)
    written = backing(cluster, volume.name)
    data = written.read_bytes() if mode == VolumeMode.BLOCK else (written / "disk.img").read_bytes()
    assert hashlib.sha256(data[: 4 * MiB]).hexdigest() == digest
    assert copy.source.digest == copy.target.digest and copy.source.algorithm != "unverified"
    # And the prime claim, the pod and its job Secret are gone; the PV is the target's
    assert cluster.get(resources.PVC, NS, prime) is None
    assert cluster.get(resources.POD, NS, prime) is None
    assert cluster.get(resources.SECRET, NS, prime) is None
    state = await platform.get_volume(NS, volume.name)
    assert state is not None and state.phase == Phase.SUCCEEDED
    # And a second call (a redelivered CopyDisks) returns the same result, touching nothing
    again = await platform.populate(volume, ImageRef(path=str(path), format=DiskFormat.RAW))
    assert again.target == copy.target


@pytest.mark.slow  # 20-60 s of kill-and-restart: kept out of make test-fast, run by make test
async def test_a_failing_populator_pod_is_retried_then_fails_with_its_reason(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given a populator claim and a source that does not exist
    volume = await populator_volume(platform, VolumeMode.BLOCK)
    missing = ImageRef(path=str(tmp_path / "gone.raw"), format=DiskFormat.RAW)
    created: list[str] = []
    requests = cluster.api.requests

    # When it is populated
    with pytest.raises(populator.PopulatorFailed, match=r"gone\.raw") as failed:
        await platform.populate(volume, missing)

    # Then each failed pod was deleted and started again, ATTEMPTS in all
    created = [
        r.body["metadata"]["name"]
        for r in requests
        if r.method == "POST"
        and r.path.endswith("/pods")
        and r.body["metadata"]["name"].startswith("populate-")
    ]
    assert len(created) == populator.ATTEMPTS
    assert isinstance(failed.value, VolumeError)
    cr = cluster.store.list(
        cluster.store.kind("populators.ferry.dev", "v1alpha1", "ferryvolumepopulators"), NS
    )[0]
    assert cr["status"]["phase"] == "Failed"
    # And the target claim is still unbound: nothing half-written was handed over
    claim = cluster.get(resources.PVC, NS, volume.name)
    assert claim is not None and claim["status"]["phase"] == "Pending"
    # And every object made for it carries the VM's labels, so clean-up finds it
    removed = await platform.delete_volumes(NS, "mig-1", "vm-1")
    assert any(name.startswith("populate-") for name in removed)
    leftovers = [
        o
        for kind in (resources.POD, resources.PVC, resources.SECRET)
        for o in cluster.store.list(kind, NS)
        if o["metadata"].get("labels", {}).get(label.VM) == "vm-1"
    ]
    assert leftovers == []


async def test_without_pvcinit_the_population_waits_for_a_node_and_says_so(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given a populator claim on WaitForFirstConsumer storage that pvcinit never placed
    path, _ = source_disk(tmp_path)
    target = VolumeTarget(disk_id="d1", storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    volume = await platform.ensure_volume(
        VolumeRequest(
            namespace=NS,
            migration="mig-1",
            vm="vm-1",
            disk_id="d1",
            capacity=4 * MiB,
            target=target,
            source=VolumeSource.POPULATOR,
        )
    )

    # When it is populated (with a one-second limit), it fails naming the missing node,
    # and no prime claim was made (upstream waits for the node before anything)
    impatient = KubernetesPlatform(platform.settings.model_copy(update={"transfer_timeout": 1}))
    try:
        with pytest.raises(populator.PopulatorFailed, match="no node was selected"):
            await impatient.populate(volume, ImageRef(path=str(path), format=DiskFormat.RAW))
    finally:
        await impatient.aclose()
    assert [
        p
        for p in cluster.store.list(resources.PVC, NS)
        if p["metadata"]["name"].startswith("populate-")
    ] == []


async def test_a_qcow2_source_decoded_by_qemu_nbd_populates_on_a_read_only_root(
    platform: KubernetesPlatform, cluster: Cluster, tmp_path: Path
) -> None:
    # Given a qcow2 source (qemu-nbd decodes it: its socket and the pinned links are
    # made in the temp dir) and a populator pod whose root filesystem is read-only
    raw, digest = source_disk(tmp_path)
    qcow2 = tmp_path / "source.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True
    )
    volume = await populator_volume(platform, VolumeMode.BLOCK)

    # When the volume-service populates it
    copy = await platform.populate(volume, ImageRef(path=str(qcow2), format=DiskFormat.QCOW2))

    # Then the bytes arrived: the pod's TMPDIR is its own emptyDir scratch
    data = backing(cluster, volume.name).read_bytes()
    assert hashlib.sha256(data[: 4 * MiB]).hexdigest() == digest
    assert copy.source.digest == copy.target.digest


def test_the_populator_pod_has_a_read_only_root_and_an_empty_dir_as_tmpdir() -> None:
    target = {
        "metadata": {"name": "t", "namespace": NS, "uid": "u1", "labels": {}},
        "spec": {"volumeMode": "Block", "resources": {"requests": {"storage": "1Mi"}}},
    }
    pod = populator.populator_pod(target, "node-1", "ferry/ferry:test", 600)
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    tmpdir = {e["name"]: e["value"] for e in container["env"]}["TMPDIR"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[tmpdir]]
    assert len(tmpdir) < 40  # qemu-nbd's socket path beneath it must fit in 108 bytes


@pytest.mark.parametrize(
    "source",
    [
        ImageRef(nbd_socket="/run/ferry/disk.sock"),
        ImageRef(
            qemu_options={
                "driver": "raw",
                "file": {"driver": "nbd", "server": {"type": "unix", "path": "/tmp/x/nbd.sock"}},
            }
        ),
    ],
    ids=["nbd_socket", "qemu-tree"],
)
async def test_a_source_on_a_unix_socket_of_the_service_is_refused_before_anything_is_made(
    platform: KubernetesPlatform, cluster: Cluster, source: ImageRef
) -> None:
    # Given a placed populator claim and a source only the volume-service's host can read
    volume = await populator_volume(platform, VolumeMode.BLOCK)

    # When it is populated, it fails for good, saying why
    with pytest.raises(VolumeError, match="Unix socket") as refused:
        await platform.populate(volume, source)
    assert refused.value.permanent

    # And no prime claim, pod or job Secret was made for it
    made = [
        o["metadata"]["name"]
        for kind in (resources.POD, resources.PVC, resources.SECRET)
        for o in cluster.store.list(kind, NS)
        if o["metadata"]["name"].startswith("populate-")
    ]
    assert made == []


def test_an_imageio_transfer_goes_to_the_pod_as_its_url_without_the_socket() -> None:
    socket_tree = {
        "driver": "raw",
        "file": {"driver": "nbd", "server": {"type": "unix", "path": "/tmp/x/nbd.sock"}},
    }
    ref = ImageRef(qemu_options=socket_tree, url="https://imageio:54322/images/t", ca="PEM")
    assert populator.pod_source(ref) == ImageRef(url="https://imageio:54322/images/t", ca="PEM")
