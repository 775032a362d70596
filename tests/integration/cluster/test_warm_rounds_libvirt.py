"""Warm rounds of a libvirt VM on the kubernetes platform, its backup jobs read over TLS.

A transfer pod cannot reach the volume-service's Unix sockets, but it reaches a remote
libvirt host's backup job on its TCP port: the job (the export's address and the
client's certificate and key) goes into the pod's Secret, and the pod reads the
export through its own ``qemu-nbd`` with those credentials. Here the host is this
machine's libvirtd (``backupTransport: tls``, the test CA of
:mod:`ferry.testing.backup_tls`), the pods are the cluster stand-in's (local
processes), and the rounds are the volume-service's own
(:func:`ferry.volume_service.warm.copy_round`): round 0 in full, a delta of the block
written since, and the last delta after the power-off, read with the domain started
paused.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import msgspec
import pytest

from ferry.platform.images import from_qemu_source
from ferry.platform.kubernetes import fill
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import VolumeRequest, VolumeState, labels_for
from ferry.proto import volume
from ferry.proto.inventory import ProviderType, VolumeMode, VolumeTarget
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.testing import backup_tls, libvirtd
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.volume_service import warm

MiB = 1 << 20
BLOCK = 64 * 1024
SIZE = 32 * MiB
NS = "migrated"


@pytest.fixture
def guest() -> Iterator[libvirtd.Guest]:
    conn = libvirt.open(libvirtd.uri_or_skip())
    made = libvirtd.define_guest(conn, [SIZE], fill=[(0, MiB, 0x11), (8 * MiB, 2 * MiB, 0x22)])
    yield made
    made.remove()
    conn.close()


@pytest.fixture
async def provider() -> AsyncIterator[tuple[LibvirtProvider, backup_tls.ClientPems]]:
    pems = backup_tls.ensure_or_skip()
    work = libvirtd.scratch_dir("ferry-work-")
    made = LibvirtProvider(libvirtd.URI, pems.secret(), backup_tls.provider_settings(work))
    yield made, pems
    await made.close()
    shutil.rmtree(work, ignore_errors=True)


async def _claim(platform: KubernetesPlatform, provider: LibvirtProvider, name: str) -> VolumeState:
    vm = await provider.vm(name)
    [disk] = vm.disks
    target = VolumeTarget(disk_id=disk.id, storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    request = VolumeRequest(namespace=NS, migration="mig-1", vm=vm.id, vm_name=vm.name,
                            disk_id=disk.id, capacity=disk.capacity, target=target,
                            source=VolumeSource.IMPORTER)  # fmt: skip
    await platform.ensure_volume(request)
    [state] = await platform.list_volumes(NS, labels_for("mig-1", vm.id))
    return state


async def _round(
    platform: KubernetesPlatform, provider: LibvirtProvider, name: str, n: int, since: str,
    final: bool = False,
) -> warm.Round:  # fmt: skip
    vm = await provider.vm(name)
    cmd = volume.CopyDisks(plan="p", migration="mig-1", vm=vm.id, step="s", namespace=NS,
                           provider=SourceRef(provider="kvm", type=ProviderType.LIBVIRT),
                           inventory=vm, precopy=n, final=final, warm=True,
                           since=since)  # fmt: skip
    claim = await _claim(platform, provider, name)
    return await warm.copy_round(platform, provider, cmd, {claim.disk_id: claim}, lambda p: None)


def _bytes(cluster: Cluster, state: VolumeState) -> bytes:
    pvc = cluster.get(resources.PVC, NS, state.name)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return Path(pv["spec"]["hostPath"]["path"]).read_bytes()[:SIZE]


def _posted(cluster: Cluster, plural: str) -> list[dict[str, object]]:
    return [r.body for r in cluster.api.requests
            if r.method == "POST" and r.path.endswith(f"/{plural}")
            if r.body["metadata"]["name"].startswith("transfer-")]  # fmt: skip


async def test_rounds_read_the_hosts_job_over_tls_from_the_pods_and_the_claim_matches(
    platform: KubernetesPlatform,
    cluster: Cluster,
    provider: tuple[LibvirtProvider, backup_tls.ClientPems],
    guest: libvirtd.Guest,
) -> None:
    source, pems = provider
    # When round 0 runs for the running domain, then a delta after a write
    first = await _round(platform, source, guest.name, 0, "")
    guest.write("vda", 4 * MiB, BLOCK, 0xAB)
    second = await _round(platform, source, guest.name, 1, first.checkpoint)
    # And the last delta after the power-off (the domain read started paused)
    guest.write("vda", 20 * MiB, 4096, 0xCD)
    await source.shutdown(await source.vm(guest.name), timeout=0.5)
    last = await _round(platform, source, guest.name, 2, second.checkpoint, final=True)

    # Then each round was a transfer pod reading the job over TLS: a full job, then deltas
    jobs = [msgspec.json.decode(base64.b64decode(s["data"]["job.json"]), type=fill.Job)  # type: ignore[index]
            for s in _posted(cluster, "secrets")]  # fmt: skip
    assert [j.delta for j in jobs] == [False, True, True] and jobs[-1].last
    assert all(j.source.nbd_tls is not None and not j.source.nbd_socket for j in jobs)
    assert [second.changed, last.changed] == [BLOCK, BLOCK]
    # and the client's key was in the Secrets only, never in a pod
    key_line = pems.key.strip().splitlines()[1]
    assert all(key_line not in str(p) for p in _posted(cluster, "pods"))
    # and the claim holds the source's bytes, the last round having compared both whole
    claim = await _claim(platform, source, guest.name)
    assert hashlib.sha256(_bytes(cluster, claim)).hexdigest() == libvirtd.qcow2_sha256(
        guest.disks["vda"]
    )
    [final] = last.copies
    assert final.source == final.target and final.source.algorithm != "unverified"
    # and nothing is left: no pod or Secret of a round, no job, the domain off
    assert [o for kind in (resources.POD, resources.SECRET) for o in cluster.store.list(kind, NS)
            if o["metadata"]["name"].startswith("transfer-")] == []  # fmt: skip
    assert not guest.dom.isActive()
    try:
        guest.dom.backupGetXMLDesc(0)
        raise AssertionError("a backup job is left")
    except libvirt.libvirtError:
        pass
    assert await source.checkpoints(await source.vm(guest.name)) == []


async def test_a_populator_pod_reads_a_running_domains_disk_over_tls(
    platform: KubernetesPlatform,
    cluster: Cluster,
    provider: tuple[LibvirtProvider, backup_tls.ClientPems],
    guest: libvirtd.Guest,
) -> None:
    source, pems = provider
    # Given a populator claim placed on WaitForFirstConsumer storage (flow 2, cold copy)
    vm = await source.vm(guest.name)
    [disk] = vm.disks
    target = VolumeTarget(disk_id=disk.id, storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    claim = await platform.ensure_volume(
        VolumeRequest(
            namespace=NS,
            migration="mig-2",
            vm=vm.id,
            vm_name=vm.name,
            disk_id=disk.id,
            capacity=disk.capacity,
            target=target,
            source=VolumeSource.POPULATOR,
        )
    )
    await platform.bind_volumes(NS, "mig-2", vm.id)
    # When the volume-service populates it from the disk as the provider describes it
    async with source.open_disk(vm, disk.id) as reader:
        ref = from_qemu_source(reader.qemu_source())
        copy = await platform.populate(claim, ref)
    # Then the pod read the host's export over TLS (its Secret says so, no pod has the key)
    [secret] = [
        s for s in _posted_all(cluster, "secrets") if s["metadata"]["name"].startswith("populate-")
    ]
    job = msgspec.json.decode(base64.b64decode(secret["data"]["job.json"]), type=fill.Job)
    assert job.source.nbd_tls is not None and job.source.qemu_options is None
    key_line = pems.key.strip().splitlines()[1]
    assert all(key_line not in str(p) for p in _posted_all(cluster, "pods"))
    # and the bound claim holds the disk's bytes, verified
    assert copy.source.digest == copy.target.digest and copy.source.algorithm != "unverified"
    state = await platform.get_volume(NS, claim.name)
    assert state is not None
    assert hashlib.sha256(_bytes(cluster, state)).hexdigest() == libvirtd.qcow2_sha256(
        guest.disks["vda"]
    )


def _posted_all(cluster: Cluster, plural: str) -> list[dict[str, Any]]:
    return [r.body for r in cluster.api.requests
            if r.method == "POST" and r.path.endswith(f"/{plural}")]  # fmt: skip
