"""Warm rounds of a vSphere VM on the kubernetes platform, read by transfer pods over HTTPS.

The volume-service reads a vSphere disk through a local ``nbdkit curl`` on a Unix
socket, which a pod cannot reach; the pod is given the same flat extent on the
datastore path instead (its URL, the reader's session cookie, the Provider's trust as
PEM, all in the pod's Secret) and reads it with ranged GETs. The rounds are the
volume-service's own (:func:`ferry.volume_service.warm.copy_round`) against the vSphere
API simulator with CBT on: round 0 in full, a delta of what the guest wrote since, and
the last delta after the power-off; then a cold copy (flow 1 without precopies).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyVmomi import vim

from ferry.platform.images import from_qemu_source
from ferry.platform.kubernetes import fill
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import VolumeRequest, VolumeState, labels_for
from ferry.proto import volume
from ferry.proto.inventory import ProviderType, VolumeMode, VolumeTarget
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Endpoint, Vcsim
from ferry.volume_service import warm

MiB = 1 << 20
NS = "migrated"
NAME = "DC0_H0_VM0"


@pytest.fixture
def vcsim() -> Iterator[Endpoint]:
    with Vcsim() as sim:
        assert sim.endpoint is not None
        yield sim.endpoint


@pytest.fixture
async def provider(vcsim: Endpoint) -> AsyncIterator[VsphereProvider]:
    secret = {"user": vcsim.username, "password": vcsim.password}
    made = VsphereProvider.create(vcsim.url, {"caBundle": vcsim.cert_file}, secret)
    yield made
    await made.close()


@pytest.fixture
def flat(vcsim: Endpoint) -> Path:
    """CBT on, and a 4 MiB flat disk with data at both ends and a hole between."""
    with arrange.admin(vcsim) as si:
        vm_ref = arrange.find_vm(si, NAME)
        arrange.run(vm_ref.ReconfigVM_Task(vim.vm.ConfigSpec(changeTrackingEnabled=True)))
        [disk] = [
            d for d in vm_ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)
        ]
        disk.capacityInBytes, disk.capacityInKB = 4 * MiB, 4 * 1024
        change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
        arrange.run(vm_ref.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[change])))
        path = arrange.datastore_dir(si) / NAME / "disk1-flat.vmdk"
    with path.open("wb") as out:
        out.truncate(4 * MiB)
        out.write(os.urandom(256 * 1024))
        out.seek(3 * MiB)
        out.write(os.urandom(256 * 1024))
    return path


def _write(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as out:
        out.seek(offset)
        out.write(data)


async def _claim(platform: KubernetesPlatform, provider: VsphereProvider) -> VolumeState:
    vm = await provider.vm(NAME)
    [disk] = vm.disks
    target = VolumeTarget(disk_id=disk.id, storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    request = VolumeRequest(namespace=NS, migration="mig-1", vm=vm.id, vm_name=vm.name,
                            disk_id=disk.id, capacity=disk.capacity, target=target,
                            source=VolumeSource.IMPORTER)  # fmt: skip
    await platform.ensure_volume(request)
    [state] = await platform.list_volumes(NS, labels_for("mig-1", vm.id))
    return state


async def _round(
    platform: KubernetesPlatform, provider: VsphereProvider, n: int, since: str, final: bool = False
) -> warm.Round:
    vm = await provider.vm(NAME)
    cmd = volume.CopyDisks(plan="p", migration="mig-1", vm=vm.id, step="s", namespace=NS,
                           provider=SourceRef(provider="vc", type=ProviderType.VSPHERE),
                           inventory=vm, precopy=n, final=final, warm=True,
                           since=since)  # fmt: skip
    claim = await _claim(platform, provider)
    return await warm.copy_round(platform, provider, cmd, {claim.disk_id: claim}, lambda p: None)


def _bytes(cluster: Cluster, state: VolumeState, size: int) -> bytes:
    pvc = cluster.get(resources.PVC, NS, state.name)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"]).read_bytes()[:size]


def _posted(cluster: Cluster, plural: str, prefix: str) -> list[dict[str, Any]]:
    return [r.body for r in cluster.api.requests
            if r.method == "POST" and r.path.endswith(f"/{plural}")
            if r.body["metadata"]["name"].startswith(prefix)]  # fmt: skip


def _jobs(cluster: Cluster, prefix: str) -> list[fill.Job]:
    return [msgspec.json.decode(base64.b64decode(s["data"]["job.json"]), type=fill.Job)
            for s in _posted(cluster, "secrets", prefix)]  # fmt: skip


async def test_rounds_read_the_datastore_over_https_from_the_pods_and_the_claim_matches(
    platform: KubernetesPlatform, cluster: Cluster, provider: VsphereProvider, flat: Path
) -> None:
    # When round 0 runs for the running VM, then a delta after a guest write
    first = await _round(platform, provider, 0, "")
    _write(flat, 1 * MiB, os.urandom(64 * 1024))
    second = await _round(platform, provider, 1, first.checkpoint)
    # And the last delta after the power-off
    _write(flat, 3 * MiB + 512 * 1024, os.urandom(4096))
    await provider.shutdown(await provider.vm(NAME), timeout=5)
    last = await _round(platform, provider, 2, second.checkpoint, final=True)

    # Then each round was a transfer pod reading the datastore path: full, then deltas
    jobs = _jobs(cluster, "transfer-")
    assert [j.delta for j in jobs] == [False, True, True] and jobs[-1].last
    assert all(j.source.http_range is not None for j in jobs)
    assert all(not j.source.nbd_socket and j.source.qemu_options is None for j in jobs)
    # and the deltas copied only what changed (CBT's areas), not the disk
    assert 0 < second.changed < 4 * MiB and 0 < last.changed < 4 * MiB
    # and the session cookie was in the Secrets only, never in a pod
    cookie = jobs[0].source.http_range.cookie  # type: ignore[union-attr]
    assert cookie and all(cookie not in str(p) for p in _posted(cluster, "pods", "transfer-"))
    # and the claim holds the source's bytes, the last round having compared both whole
    claim = await _claim(platform, provider)
    assert _bytes(cluster, claim, 4 * MiB) == flat.read_bytes()
    [final] = last.copies
    assert final.source == final.target and final.source.algorithm != "unverified"
    # and nothing is left: no pod or Secret of a round, no snapshot on the VM
    assert [o for kind in (resources.POD, resources.SECRET) for o in cluster.store.list(kind, NS)
            if o["metadata"]["name"].startswith("transfer-")] == []  # fmt: skip
    assert await provider.checkpoints(await provider.vm(NAME)) == []


async def test_a_cold_copy_of_a_powered_off_vm_runs_in_a_transfer_pod(
    platform: KubernetesPlatform, cluster: Cluster, provider: VsphereProvider, flat: Path
) -> None:
    # Given a powered-off VM's claim (flow 1 without precopies: the importer's copy)
    vm = await provider.vm(NAME)
    await provider.shutdown(vm, timeout=5)
    claim = await _claim(platform, provider)
    # When the volume-service copies the disk as the provider describes it
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        copy = await platform.import_disk(claim, from_qemu_source(reader.qemu_source()))
    # Then a transfer pod read it over HTTPS, verified, and the claim holds its bytes
    [job] = _jobs(cluster, "transfer-")
    assert job.source.http_range is not None and job.source.qemu_options is None
    assert copy.source == copy.target and copy.source.algorithm != "unverified"
    assert _bytes(cluster, claim, 4 * MiB) == flat.read_bytes()
