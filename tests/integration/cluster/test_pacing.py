"""Bandwidth budgets hold on the kubernetes platform: transfer pods ask for every chunk.

The stand-in's kubelet runs each pod as a local process, so a pod reaches the grant
broker served here on 127.0.0.1, on a real health server (the runtime's, with the
platform's routes mounted as the volume-service mounts them). The budget is a real
:class:`ferry.bus.rate.SharedRate` on a private nats-server. A populator pod (flow 2)
and a transfer pod of round 0 (flow 1, reading an oVirt image transfer from the real
imageio daemon) copy a disk under it: the copy inside the pod takes as long as the
budget says, and the budget granted exactly the bytes the pod wrote.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
from aiohttp import web

from ferry.bus import Bus
from ferry.bus.rate import SharedRate
from ferry.platform import base, factory
from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, grants
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.settings import KubernetesSettings, PlatformSettings
from ferry.platform.volumes import VolumeError, VolumeRequest, VolumeState
from ferry.proto.inventory import VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.runtime.health import HealthServer
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.ovirt.imageio import Imageio

NS = "migrated"
MiB = 1 << 20
RATE, PERIOD = 2 * MiB, 0.25  # the budget: 2 MiB/s, in windows of 512 KiB
SIZE = 8 * MiB  # four seconds' worth


def settings_for(cluster: Cluster, pacing_url: str) -> PlatformSettings:
    kube = KubernetesSettings(
        host=cluster.url,
        pvcinit_image="ferry/tools:test",
        populator_image="ferry/ferry:test",
        poll_seconds=0.05,
        bind_timeout=5,
        transfer_timeout=60,
        pacing_url=pacing_url,
    )
    return PlatformSettings(kind="kubernetes", kubernetes=kube)


@pytest.fixture
async def paced(cluster: Cluster, server: HealthServer) -> AsyncIterator[KubernetesPlatform]:
    """The platform with its pacing URL, its routes mounted as the volume-service does."""
    chosen = settings_for(cluster, f"http://127.0.0.1:{server.port}")
    made = factory.create(chosen, data_dir=Path("unused"))
    assert isinstance(made, KubernetesPlatform)
    server.mount(cast("list[web.RouteDef]", base.http_routes(made)))
    yield made
    await made.aclose()


class Budget:
    """A copy's rate as the volume-service makes it: a SharedRate, with what it granted."""

    def __init__(self, bus: Bus, name: str) -> None:
        self.shared = SharedRate(bus, name, RATE, period=PERIOD)
        self.asks = 0

    async def __call__(self, nbytes: int) -> None:
        self.asks += 1
        await self.shared.take(nbytes)


def random_disk(tmp_path: Path) -> tuple[Path, str]:
    data = os.urandom(SIZE)  # all allocated: every byte is asked for and written
    path = tmp_path / "source.raw"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


async def volume(platform: KubernetesPlatform, source: VolumeSource) -> VolumeState:
    target = VolumeTarget(disk_id="d1", storage_class="wffc", volume_mode=VolumeMode.BLOCK)
    made = await platform.ensure_volume(
        VolumeRequest(
            namespace=NS,
            migration="mig-1",
            vm="vm-1",
            vm_name="web",
            disk_id="d1",
            capacity=SIZE,
            target=target,
            source=source,
        )
    )
    await platform.bind_volumes(NS, "mig-1", "vm-1")
    return made


def written(cluster: Cluster, claim: str) -> str:
    pvc = cluster.get(resources.PVC, NS, claim)
    assert pvc is not None
    pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
    assert pv is not None
    return hashlib.sha256(Path(pv["spec"]["hostPath"]["path"]).read_bytes()[:SIZE]).hexdigest()


def posted(cluster: Cluster, plural: str) -> list[Any]:
    return [r for r in cluster.api.requests if r.method == "POST" and r.path.endswith(plural)]


def fill_job(secret: dict[str, Any]) -> fill.Job:
    return msgspec.json.decode(base64.b64decode(secret["data"]["job.json"]), type=fill.Job)


def fastest(nbytes: int) -> float:
    """The least time a budget lets ``nbytes`` move in: at its rate, less the window the
    copy began in (granted from that window's start) and one piece (a window's worth,
    granted at the start of the last window): :mod:`ferry.bus.rate`'s bound."""
    return (nbytes - 2 * RATE * PERIOD) / RATE


async def test_a_populator_pod_moves_no_faster_than_its_budget(
    paced: KubernetesPlatform, cluster: Cluster, bus: Bus, tmp_path: Path
) -> None:
    # Given a populator claim, an 8 MiB disk of random bytes and a 2 MiB/s budget
    path, digest = random_disk(tmp_path)
    claim = await volume(paced, VolumeSource.POPULATOR)
    budget = Budget(bus, "flow-2")

    # When the claim is populated under the budget
    copy = await paced.populate(claim, ImageRef(path=str(path)), rate=budget)

    # Then the pod's copy took as long as the budget says (8 MiB: at least 3.5 s)
    assert copy.seconds >= fastest(SIZE), copy.seconds
    # and the budget granted exactly the bytes the pod wrote, asked for chunk by chunk
    assert copy.bytes_copied == SIZE and budget.shared.moved == SIZE
    assert paced.pacing.granted == SIZE and budget.asks >= 2
    # and the claim holds the disk; the copy's ticket is closed
    assert written(cluster, claim.name) == digest
    assert paced.pacing.open == 0


async def test_a_transfer_round_moves_no_faster_than_its_budget(
    paced: KubernetesPlatform, cluster: Cluster, bus: Bus, daemon: Imageio, tmp_path: Path
) -> None:
    # Given an importer claim, an 8 MiB disk served by imageio and a 2 MiB/s budget
    path, digest = random_disk(tmp_path)
    ticket = daemon.serve(path, "raw", SIZE)
    source = ImageRef(path="vm-1/d1", url=daemon.url(ticket), ca=daemon.ca_file.read_text())
    claim = await volume(paced, VolumeSource.IMPORTER)
    budget = Budget(bus, "flow-1")

    # When round 0 copies it under the budget
    copy = await paced.import_disk(claim, source, rate=budget)

    # Then the pod's copy took as long as the budget says, and the budget granted
    # exactly the bytes the pod wrote
    assert copy.seconds >= fastest(SIZE), copy.seconds
    assert copy.bytes_copied == SIZE and budget.shared.moved == SIZE
    assert written(cluster, claim.name) == digest
    assert paced.pacing.open == 0
    # and the pod found its ticket in its job Secret only, never in its spec (argv, env)
    [job] = [fill_job(r.body) for r in posted(cluster, "/secrets")]
    assert job.pace_url == paced.settings.pacing_url
    assert len(job.pace_token) >= 40
    assert all(job.pace_token not in str(r.body) for r in posted(cluster, "/pods"))


async def test_a_wrong_token_is_forbidden_and_takes_nothing(
    paced: KubernetesPlatform, server: HealthServer, bus: Bus
) -> None:
    # Given a copy's open ticket under a budget, on the served route
    budget = Budget(bus, "guessed")
    url = f"http://127.0.0.1:{server.port}"
    with paced.pacing.ticket(budget) as token:
        wrong = grants.Throttle(grants.Ticket(url=url, token=token[::-1]), backoff=0)
        right = grants.Throttle(grants.Ticket(url=url, token=token), backoff=0)

        # When a pod asks with another token (the pod's own program, in a thread)
        with pytest.raises(OSError, match="HTTP 403"):
            await asyncio.to_thread(wrong, 4 * MiB)
        # and someone asks with no token at all
        request = urllib.request.Request(url + grants.PATH, b'{"bytes": 1}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as bare:
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=10)

        # Then both are forbidden and nothing was taken from the budget
        assert bare.value.code == 403
        assert budget.asks == 0 and budget.shared.moved == 0 and paced.pacing.granted == 0
        # while the ticket's own token is granted
        await asyncio.to_thread(right, 4096)
        assert budget.shared.moved == 4096
    # And once the copy ended, its own token is forbidden too
    with pytest.raises(OSError, match="HTTP 403"):
        await asyncio.to_thread(right, 4096)
    assert budget.shared.moved == 4096


async def test_a_budget_without_a_pacing_url_is_refused_before_any_pod(
    platform: KubernetesPlatform, cluster: Cluster, bus: Bus, tmp_path: Path
) -> None:
    # Given the platform with no pacing URL (its pods could not ask for grants)
    path, _ = random_disk(tmp_path)
    claim = await volume(platform, VolumeSource.POPULATOR)
    started = time.monotonic()

    # When a copy under a budget is asked for
    with pytest.raises(VolumeError, match="pacing_url"):
        await platform.populate(claim, ImageRef(path=str(path)), rate=Budget(bus, "nowhere"))

    # Then it is refused at once, and no pod was made to copy unpaced
    assert time.monotonic() - started < 5
    assert not [r for r in posted(cluster, "/pods") if r.body["metadata"]["name"].startswith("pop")]
