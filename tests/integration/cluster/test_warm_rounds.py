"""Warm rounds (flow 1) on the kubernetes platform: one Ferry transfer pod per round.

The source is the warm oVirt test VM (:mod:`ferry.testing.ovirt.warmguest`: a running
libvirt guest behind the engine stand-in and the real imageio daemon); the rounds are
the volume-service's own (:func:`ferry.volume_service.warm.copy_round`); the pods are
run by the cluster stand-in's kubelet as local processes, reading the backup's image
transfers over HTTPS and writing the VM's claims (a Block one and a Filesystem one).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, fillpod, rounds
from ferry.platform.kubernetes.client import KubeClient
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import Phase, VolumeError, VolumeRequest, VolumeState, labels_for
from ferry.proto import volume
from ferry.proto.inventory import Extent, ProviderType, VolumeMode, VolumeTarget
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.ovirt.provider import OvirtProvider
from ferry.testing import libvirtd
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.ovirt.engine import Engine
from ferry.testing.ovirt.warmguest import (  # noqa: F401 - fixtures: guest, engine, provider
    BLOCK,
    DATA,
    FILL,
    SIZE,
    VM,
    MiB,
    engine_fixture,
    expected,
    guest_fixture,
    provider_fixture,
    zero,
)
from ferry.volume_service import warm

sys.path.insert(0, str(Path(__file__).parent))  # test_rbac: the chart's roles
from test_rbac import granted, used

NS = "migrated"
TOOLS_IMAGE = "ferry/tools:test"  # the conftest's cluster: the host's /usr/bin
MODES = [VolumeMode.BLOCK, VolumeMode.FILESYSTEM]  # root's claim, data's claim


async def claims(platform: KubernetesPlatform, provider: OvirtProvider) -> dict[str, VolumeState]:
    """The VM's importer claims (made once, found by labels after), by disk id."""
    vm = await provider.vm(VM)
    for disk, mode in zip(vm.disks, MODES, strict=True):
        target = VolumeTarget(disk_id=disk.id, storage_class="wffc", volume_mode=mode)
        await platform.ensure_volume(
            VolumeRequest(
                namespace=NS,
                migration="mig-1",
                vm=vm.id,
                vm_name=vm.name,
                disk_id=disk.id,
                capacity=disk.capacity,
                target=target,
                source=VolumeSource.IMPORTER,
            )
        )
    found = await platform.list_volumes(NS, labels_for("mig-1", vm.id))
    return {v.disk_id: v for v in found}


async def copy_round(
    platform: KubernetesPlatform, provider: OvirtProvider, precopy: int, since: str, final: bool
) -> warm.Round:
    vm = await provider.vm(VM)
    cmd = volume.CopyDisks(
        plan="p",
        migration="mig-1",
        vm=vm.id,
        step="s",
        namespace=NS,
        provider=SourceRef(provider="engine", type=ProviderType.OVIRT),
        inventory=vm,
        precopy=precopy,
        final=final,
        warm=True,
        since=since,
    )
    found = await claims(platform, provider)
    return await warm.copy_round(platform, provider, cmd, found, lambda p: None)


def data(cluster: Cluster, state: VolumeState) -> bytes:
    pvc = cluster.get(resources.PVC, NS, state.name)
    assert pvc is not None and pvc["status"]["phase"] == "Bound"
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    path = Path(pv["spec"]["hostPath"]["path"])
    if state.volume_mode == VolumeMode.FILESYSTEM:
        path /= fill.FILESYSTEM_IMAGE
    return path.read_bytes()[: state.capacity]


def backing(cluster: Cluster, state: VolumeState) -> Path:
    pvc = cluster.get(resources.PVC, NS, state.name)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"])


def transfer_objects(cluster: Cluster) -> list[str]:
    return [
        f"{kind.kind}/{o['metadata']['name']}"
        for kind in (resources.POD, resources.SECRET)
        for o in cluster.store.list(kind, NS)
        if o["metadata"]["name"].startswith("transfer-")
    ]


def posted(cluster: Cluster, plural: str) -> list[dict[str, Any]]:
    return [
        r.body
        for r in cluster.api.requests
        if r.method == "POST" and r.path.endswith(f"/{plural}")
        if r.body["metadata"]["name"].startswith("transfer-")
    ]


def jobs(cluster: Cluster) -> list[fill.Job]:
    return [
        msgspec.json.decode(base64.b64decode(s["data"]["job.json"]), type=fill.Job)
        for s in posted(cluster, "secrets")
    ]


async def test_round_zero_fills_the_claims_then_a_delta_round_writes_only_the_changes(
    platform: KubernetesPlatform,
    cluster: Cluster,
    provider: OvirtProvider,
    guest: libvirtd.Guest,
) -> None:
    # Given the running VM (root written with FILL, data empty) and its importer claims
    vm = await provider.vm(VM)
    root, extra = vm.disks[0].id, vm.disks[1].id

    # When round 0 runs
    first = await copy_round(platform, provider, 0, "", final=False)

    # Then each claim holds its disk, verified by the pod, and is a full copy now
    now = await claims(platform, provider)
    assert data(cluster, now[root]) == bytes(expected(FILL))
    assert data(cluster, now[extra]) == bytes(DATA)
    for copy in first.copies:
        assert copy.source == copy.target and copy.source.algorithm != "unverified"
    assert {v.phase for v in now.values()} == {Phase.SUCCEEDED}
    # and each pod read the transfer's URL from its Secret, never from its spec
    made = posted(cluster, "pods")
    assert len(made) == 2 and all("https://" not in str(p) for p in made)
    assert all(j.source.url.startswith("https://") and not j.delta for j in jobs(cluster))
    # and no pod or Secret is left
    assert transfer_objects(cluster) == []
    calls = used(cluster.api.requests)
    cluster.api.requests.clear()

    # Given writes in the guest, and a byte of the root claim no round should touch
    guest.write("vda", 4 * MiB, BLOCK, 0xAB)
    zero(guest, 0, BLOCK)  # FILL's first bytes zeroed: must be zeroed on the target too
    guest.write("vdb", 2 * MiB, 8192, 0xEF)
    untouched = 20 * MiB
    with backing(cluster, now[root]).open("r+b") as f:  # unchanged at the source
        f.seek(untouched)
        f.write(b"\x77")

    # When the next round runs
    second = await copy_round(platform, provider, 1, first.checkpoint, final=False)

    # Then the pods were delta jobs of exactly the round's changed extents
    deltas = jobs(cluster)
    assert all(j.delta and not j.last for j in deltas)
    assert sorted((e for j in deltas for e in j.extents), key=lambda e: e.offset) == [
        Extent(0, BLOCK),
        Extent(2 * MiB, BLOCK),  # vdb's
        Extent(4 * MiB, BLOCK),
    ]
    assert second.changed == 3 * BLOCK
    assert sum(c.bytes_copied for c in second.copies) == second.changed
    # and the claims equal the disks' new bytes where they changed, the rest untouched
    new_root = expected([*FILL, (4 * MiB, BLOCK, 0xAB), (0, BLOCK, 0x00)])
    got = bytearray(data(cluster, now[root]))
    assert got[untouched] == 0x77
    got[untouched] = 0
    assert got == new_root
    assert data(cluster, now[extra]) == bytes(expected([(2 * MiB, 8192, 0xEF)], DATA))
    assert transfer_objects(cluster) == []

    # When the last round runs over a target that differs from the source
    with pytest.raises(VolumeError, match="reads back as"):
        await copy_round(platform, provider, 2, second.checkpoint, final=True)
    # Then the whole-disk comparison caught it; nothing is left of the round
    assert transfer_objects(cluster) == []
    # And every call the rounds made is granted by the volume-service's role
    calls |= used(cluster.api.requests)
    assert sorted(calls - granted("volume-service")) == []
    assert ("", "persistentvolumeclaims", "patch") in calls  # round 0's result on the claim


async def test_a_round_whose_ticket_is_refused_fails_with_the_pods_reason_and_leaves_nothing(
    platform: KubernetesPlatform, cluster: Cluster, provider: OvirtProvider, engine: Engine
) -> None:
    # Given an importer claim and a transfer URL whose ticket the daemon does not know
    found = await claims(platform, provider)
    claim = next(v for v in found.values() if v.volume_mode == VolumeMode.BLOCK)
    vm = await provider.vm(VM)
    async with provider.changes(vm, None) as view:
        url, ca = view.https_export(claim.disk_id)
    refused = url.rsplit("/", 1)[0] + f"/{uuid.uuid4()}"
    source = ImageRef(path=f"{VM}/{claim.disk_id}", url=refused, ca=ca, size=SIZE)

    # When round 0 runs
    with pytest.raises(rounds.TransferFailed) as failed:
        await platform.import_disk(claim, source)

    # Then the reason is the pod's own (imageio refused the ticket), not a time-out,
    # at once: the program said another pod would be refused too
    assert "transfer pod" in failed.value.reason and "failed" in failed.value.reason
    assert "SourceGoneError: imageio answered 40" in failed.value.reason
    assert len(posted(cluster, "pods")) == 1
    # and no pod or Secret remains; the claim is no full copy
    assert transfer_objects(cluster) == []
    state = await platform.get_volume(NS, claim.name)
    assert state is not None and state.phase != Phase.SUCCEEDED


@pytest.mark.parametrize(
    "source",
    [
        ImageRef(path="db/root", nbd_socket="/run/ferry/nbd.sock", size=SIZE),
        ImageRef(path="/var/lib/ferry/disk.raw", size=SIZE),
    ],
    ids=["socket", "host-file"],
)
async def test_a_source_a_pod_cannot_reach_is_refused_before_anything_is_made(
    platform: KubernetesPlatform, cluster: Cluster, source: ImageRef
) -> None:
    # Given an importer claim (no guest needed: nothing is read)
    target = VolumeTarget(disk_id="d1", storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    claim = await platform.ensure_volume(
        VolumeRequest(
            namespace=NS,
            migration="mig-1",
            vm="vm-1",
            disk_id="d1",
            capacity=SIZE,
            target=target,
            source=VolumeSource.IMPORTER,
        )
    )

    # When a round is asked to read a disk on the volume-service's host
    for run in (
        platform.import_disk(claim, source),
        platform.apply_changes(claim, source, last=True),
    ):
        with pytest.raises(VolumeError, match="cannot read") as refused:
            await run
        # Then it is refused for good, saying why, and nothing was made for it
        assert refused.value.permanent
    assert posted(cluster, "pods") == posted(cluster, "secrets") == []
    assert transfer_objects(cluster) == []


async def test_a_round_run_again_after_a_kill_replaces_the_pod_the_killed_attempt_left(
    platform: KubernetesPlatform, cluster: Cluster, provider: OvirtProvider
) -> None:
    # Given what a killed round 0 left: its job Secret and its pod, still running
    found = await claims(platform, provider)
    claim = next(v for v in found.values() if v.volume_mode == VolumeMode.BLOCK)
    pvc = cluster.get(resources.PVC, NS, claim.name)
    assert pvc is not None
    name = rounds.pod_name(pvc)
    old_job = fill.Job(source=ImageRef(url="https://old/images/t"), target="/", block=True,
                       capacity=SIZE, state_dir="/tmp")  # fmt: skip
    cluster.store.create(resources.SECRET, fillpod.job_secret(name, NS, {}, old_job))
    leftover = fillpod.pod(name, NS, {}, claim=claim.name, block=True, node="",
                           image=TOOLS_IMAGE, deadline=300)  # fmt: skip
    leftover["spec"]["containers"][0]["command"] = ["sleep", "300"]
    cluster.store.create(resources.POD, leftover)
    # and what it wrote where the source disk has a hole
    for _ in range(400):
        placed = cluster.get(resources.PVC, NS, claim.name)
        if placed is not None and placed["status"].get("phase") == "Bound":
            break
        await asyncio.sleep(0.05)
    with backing(cluster, claim).open("r+b") as f:
        f.seek(20 * MiB)
        f.write(b"left by the killed pod")

    # When round 0 runs again
    vm = await provider.vm(VM)
    async with provider.changes(vm, None) as view:
        url, ca = view.https_export(claim.disk_id)
        source = ImageRef(path=f"{VM}/{claim.disk_id}", url=url, ca=ca, size=SIZE)
        copy = await platform.import_disk(claim, source)
        disk = await view.read(claim.disk_id, 0, SIZE)  # the guest's disk as of the view

    # Then the leftover went before the round's own pod was made: one pod at a time
    # (the stand-in's kubelet knows pods by name, so it may see the new pod fail as the
    # old one ends: the round then starts another, again after deleting the one before)
    order = [
        r.method
        for r in cluster.api.requests
        if r.method in ("POST", "DELETE")
        and r.path.split("/")[-1 if r.method == "POST" else -2] == "pods"
        if name in (r.path + str(r.body))
    ]
    assert order[0] == "DELETE" and order.count("POST") >= 1
    assert all(order[i - 1] == "DELETE" for i, m in enumerate(order) if m == "POST")
    # and the round's own job replaced the killed one's; the disk arrived, nothing is left
    assert [j.source.url for j in jobs(cluster)] == [url]
    assert copy.source == copy.target
    assert data(cluster, claim) == disk
    assert transfer_objects(cluster) == []


async def test_a_pod_that_cannot_start_is_the_rounds_reason_at_once(
    platform: KubernetesPlatform, cluster: Cluster, client: KubeClient
) -> None:
    # Given an importer claim and a transfer image the cluster cannot pull
    target = VolumeTarget(disk_id="d1", storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    claim = await platform.ensure_volume(
        VolumeRequest(namespace=NS, migration="mig-1", vm="vm-1", disk_id="d1",
                      capacity=SIZE, target=target, source=VolumeSource.IMPORTER)
    )  # fmt: skip
    settings = platform.settings.model_copy(update={"populator_image": "ferry/missing:1"})
    source = ImageRef(path="db/root", url="https://imageio.invalid/images/t", size=SIZE)

    # When round 0 runs
    with pytest.raises(rounds.TransferFailed, match="ErrImagePull") as failed:
        await rounds.Rounds(client, settings).full(claim, source, None)

    # Then it says why without waiting out the transfer time-out, and leaves nothing
    assert "cannot run" in failed.value.reason
    assert transfer_objects(cluster) == []
