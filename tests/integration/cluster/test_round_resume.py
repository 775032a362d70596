"""A warm delta round on the kubernetes platform resumes in the next pod, Block claims too.

A transfer pod keeps nothing of its own past its end (its state directory is an
emptyDir, and a Block claim has no room for a file), so a delta round's pod prints
its durable ledger and the volume-service hands the last one to the pod it starts
next for the round. Here the round's pod is evicted (node pressure, as the kubelet
does it: killed, phase Failed) once part of the round is durable, or is what a
killed volume-service left running when the round comes again: either way the
next pod writes only the ranges the one before had not made durable, and the claim
ends equal to the source. The source is a 16 MiB disk served by the real imageio
daemon; a 2 MiB/s budget (the grant broker) makes the round last seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import msgspec
import pytest
from aiohttp import web

from ferry.bus import Bus
from ferry.platform import base, factory
from ferry.platform.copy import delta
from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, fillpod, grants, rounds
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import VolumeRequest, VolumeState
from ferry.proto.inventory import Extent, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.runtime.health import HealthServer
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.ovirt.imageio import Imageio

sys.path.insert(0, str(Path(__file__).parent))  # the budget, the rounds' jobs and objects
from test_pacing import Budget, settings_for
from test_warm_rounds import jobs, transfer_objects

NS = "migrated"
MiB = 1 << 20
SIZE = 16 * MiB
CHANGED = 12 * MiB  # three ranges of the round (delta.CHUNK each)
AT = 2 * MiB


@pytest.fixture
async def platform(cluster: Cluster, server: HealthServer) -> AsyncIterator[KubernetesPlatform]:
    """The platform with its grant broker mounted, committing every 0.2 s."""
    chosen = settings_for(cluster, f"http://127.0.0.1:{server.port}")
    kube = chosen.kubernetes.model_copy(update={"checkpoint_seconds": 0.2})
    chosen = chosen.model_copy(update={"kubernetes": kube})
    made = factory.create(chosen, data_dir=Path("unused"))
    assert isinstance(made, KubernetesPlatform)
    server.mount(cast("list[web.RouteDef]", base.http_routes(made)))
    yield made
    await made.aclose()


async def filled_claim(
    platform: KubernetesPlatform, daemon: Imageio, tmp_path: Path
) -> tuple[VolumeState, Path, ImageRef]:
    """A Block importer claim holding round 0 of a disk that has since changed."""
    path = tmp_path / "source.raw"
    path.write_bytes(os.urandom(SIZE))
    ticket = daemon.serve(path, "raw", SIZE)
    url, ca = daemon.url(ticket), daemon.ca_file.read_text()
    target = VolumeTarget(disk_id="d1", storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    claim = await platform.ensure_volume(
        VolumeRequest(namespace=NS, migration="mig-1", vm="vm-1", vm_name="web", disk_id="d1",
                      capacity=SIZE, target=target, source=VolumeSource.IMPORTER)
    )  # fmt: skip
    await platform.bind_volumes(NS, "mig-1", "vm-1")
    await platform.import_disk(claim, ImageRef(path="vm-1/d1", url=url, ca=ca))
    with path.open("r+b") as f:
        f.seek(AT)
        f.write(os.urandom(CHANGED))
    changed = ImageRef(path="vm-1/d1", url=url, ca=ca, extents=[Extent(AT, CHANGED)],
                       snapshot="cp-1")  # fmt: skip
    return claim, path, changed


def pod_of(cluster: Cluster, claim: VolumeState) -> str:
    pvc = cluster.get(resources.PVC, NS, claim.name)
    assert pvc is not None
    return rounds.pod_name(pvc)


async def durable(cluster: Cluster, name: str) -> int:
    """Ranges the running pod ``name`` has printed as durable (0: none yet)."""
    text, _ended = await cluster.kubelet.logs(NS, name)
    done = 0
    for raw in text.splitlines():
        try:
            line = msgspec.json.decode(raw, type=fill.Line)
        except msgspec.DecodeError:
            continue
        if isinstance(line, fill.Checkpoint):
            done = line.state.done
    return done


async def part_durable(cluster: Cluster, name: str) -> int:
    for _ in range(600):
        done = await durable(cluster, name)
        if 0 < done < CHANGED // delta.CHUNK:
            return done
        await asyncio.sleep(0.02)
    raise AssertionError(f"pod {name} made no part of the round durable")


def on_claim(cluster: Cluster, claim: VolumeState) -> str:
    pvc = cluster.get(resources.PVC, NS, claim.name)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return hashlib.sha256(Path(pv["spec"]["hostPath"]["path"]).read_bytes()[:SIZE]).hexdigest()


async def test_a_delta_round_whose_pod_is_evicted_resumes_in_the_next_pod(
    platform: KubernetesPlatform, cluster: Cluster, bus: Bus, daemon: Imageio, tmp_path: Path
) -> None:
    # Given a Block claim holding round 0, and 12 MiB of the disk changed since
    claim, path, changed = await filled_claim(platform, daemon, tmp_path)
    cluster.api.requests.clear()

    # When the delta round runs under a 2 MiB/s budget, and its pod is evicted once
    # part of the round is durable
    budget = Budget(bus, "flow-1")
    running = asyncio.create_task(platform.apply_changes(claim, changed, rate=budget))
    name = pod_of(cluster, claim)
    seen = await part_durable(cluster, name)
    cluster.kubelet.evict(NS, name, "The node was low on resource: ephemeral-storage.")
    copy = await running

    # Then the next pod got the evicted one's last ledger, and wrote only the rest
    first, second = jobs(cluster)
    assert first.resume is None
    assert second.resume is not None and second.resume.done >= seen
    assert copy.bytes_copied == CHANGED - second.resume.done * delta.CHUNK < CHANGED
    # and the round verified, the claim equals the source, and nothing is left
    assert copy.source == copy.target and copy.source.algorithm == delta.ALGORITHM
    assert on_claim(cluster, claim) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert transfer_objects(cluster) == []


async def test_a_round_run_again_resumes_from_the_pod_a_killed_attempt_left_running(
    platform: KubernetesPlatform, cluster: Cluster, bus: Bus, daemon: Imageio, tmp_path: Path
) -> None:
    # Given a Block claim holding round 0, 12 MiB of the disk changed since, and the
    # round's pod as a killed volume-service left it: running, part of it durable
    claim, path, changed = await filled_claim(platform, daemon, tmp_path)
    budget = Budget(bus, "flow-1")
    name = pod_of(cluster, claim)
    with platform.pacing.ticket(budget) as token:
        ticket = grants.Ticket(url=platform.settings.pacing_url, token=token)
        job = fillpod.job(claim, changed, ticket, delta=True, extents=list(changed.extents),
                          key=changed.snapshot, checkpoint_seconds=0.2)  # fmt: skip
        cluster.store.create(resources.SECRET, fillpod.job_secret(name, NS, {}, job))
        left = fillpod.pod(name, NS, {}, claim=claim.name, block=True, node="",
                           image="ferry/ferry:test", deadline=300)  # fmt: skip
        cluster.store.create(resources.POD, left)
        seen = await part_durable(cluster, name)
    cluster.api.requests.clear()

    # When the round comes again (redelivered to the restarted volume-service)
    copy = await platform.apply_changes(claim, changed, rate=Budget(bus, "flow-1"))

    # Then its pod resumed from the ledger the left pod printed, and wrote only the rest
    [job] = jobs(cluster)
    assert job.resume is not None and job.resume.done >= seen
    assert copy.bytes_copied == CHANGED - job.resume.done * delta.CHUNK < CHANGED
    assert copy.source == copy.target
    assert on_claim(cluster, claim) == hashlib.sha256(path.read_bytes()).hexdigest()
    assert transfer_objects(cluster) == []
