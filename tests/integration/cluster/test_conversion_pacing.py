"""A conversion pod's reads under a bandwidth budget: its pacer asks the conversion-service.

The stand-in's kubelet really runs the pod (the conversion image: the host's tools and
Ferry's packages). Its command is what the conversion-service composes for a full
conversion under a budget (``conversion_service.pacing.plan``) around a captive
``nbdkit`` (its file plugin standing for ``curl``) and, standing for virt-v2v's copy, an
eager reader (``nbdcopy`` to ``null:``). The pacer inside the pod asks the grant
broker, served here on 127.0.0.1 as the conversion-service serves it, and writes what
it was granted into the helper's rate file. The reader must get no more than the
budget, and not much less (the rate file would stay at its 1 MiB/s start if the pod
fed it nothing).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from aiohttp import web

from ferry.conversion_service import pacing
from ferry.platform import base, factory
from ferry.platform.kubernetes import podpace
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.settings import PlatformSettings
from ferry.platform.workloads import Workload
from ferry.proto import label
from ferry.runtime.health import HealthServer
from ferry.testing.cluster.cluster import Cluster

NS = "migrated"
MiB = 1 << 20
RATE = 8 * MiB  # the budget, bytes per second
SIZE = 24 * MiB
WORKDIR = "/var/tmp/ferry-pace-test"  # inside the pod: its own emptyDir
OWNER = {label.MIGRATION: "mig-1", label.VM: "vm-1"}


@pytest.fixture
async def paced(
    platform: KubernetesPlatform, server: HealthServer
) -> AsyncIterator[KubernetesPlatform]:
    """The platform with its pacing URL, its routes mounted as the conversion-service does."""
    url = f"http://127.0.0.1:{server.port}"
    kube = platform.settings.model_copy(update={"pacing_url": url})
    made = factory.create(PlatformSettings(kind="kubernetes", kubernetes=kube), data_dir=Path("x"))
    assert isinstance(made, KubernetesPlatform)
    server.mount(cast("list[web.RouteDef]", base.http_routes(made)))
    yield made
    await made.aclose()


class Budget:
    """A budget of ``RATE`` bytes a second, one asker at a time; what it granted."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.granted = 0

    async def __call__(self, nbytes: int) -> None:
        async with self.lock:
            await asyncio.sleep(nbytes / RATE)
            self.granted += nbytes


def workload(plan: pacing.Plan, disk: Path, reader: str) -> Workload:
    """The pod: ``reader`` run by the captive helper (``$uri`` is its NBD URI), all of it
    under the plan's pacer."""
    [helper] = plan.captive
    argv = plan.wrap([helper[0], "--run", reader, *helper[1:]])
    return Workload(
        name="full-conversion",
        argv=argv,
        workdir=WORKDIR,
        time_limit=120,
        grace=2,
        labels=OWNER,
        namespace=NS,
        secret_files=plan.files,
        secret_dir=f"{WORKDIR}/input",
    )


def planned(platform: KubernetesPlatform, budget: Budget, disk: Path) -> pacing.Plan:
    """What the conversion-service plans for one captive helper serving ``disk``."""
    helper = ["nbdkit", "--readonly", f"--unix={WORKDIR}/nbd-0.sock", "file", str(disk)]
    return pacing.plan(
        platform,
        budget,
        pacing.STEP,
        [helper],
        workdir=Path("unused"),  # where the service would feed the rate file: not here
        seen=WORKDIR,
        secret_dir=f"{WORKDIR}/input",
    )


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(SIZE))  # data, so nothing is skipped as a hole
    return path


async def run(platform: KubernetesPlatform, plan: pacing.Plan, disk: Path) -> tuple[int, str]:
    # the reader's own time, measured inside the pod
    reader = 's=$(date +%s%N); nbdcopy "$uri" null:; e=$(date +%s%N); echo "read-ns $((e-s))"'
    log = io.BytesIO()
    async with plan.grants:
        status = await platform.run_workload(workload(plan, disk, reader), log)
    return status, log.getvalue().decode(errors="replace")


async def test_a_conversion_pod_reads_no_faster_than_its_budget(
    paced: KubernetesPlatform, cluster: Cluster, disk: Path
) -> None:
    # Given a full conversion's captive helper under a budget, in a pod
    budget = Budget()
    plan = planned(paced, budget, disk)

    # When its reader reads the whole disk as fast as the helper serves it
    status, log = await run(paced, plan, disk)

    # Then it read at the budget's rate, within the filter's one-second bucket and the
    # 1 MiB/s start (before the first period's grants reach the rate file)
    assert status == 0, log
    found = re.search(r"read-ns (\d+)", log)
    assert found is not None, log
    rate = SIZE / (int(found.group(1)) / 1e9)
    print(f"\npod read {rate / MiB:.1f} MiB/s under a budget of {RATE / MiB:.0f} MiB/s")
    allowed = (SIZE + RATE * pacing.BURST_SECONDS) / SIZE * RATE
    assert RATE * 0.5 < rate <= allowed * 1.05, (rate / MiB, allowed / MiB)
    # and the grants were taken from the budget through the broker, ticket closed after
    assert budget.granted > SIZE / 2 and paced.pacing.granted == budget.granted
    assert paced.pacing.open == 0
    # and the ticket's token was in the pod's Secret only, never in its spec
    [pod] = [r.body for r in cluster.api.requests if r.method == "POST" and "/pods" in r.path]
    assert "podpace" in " ".join(pod["spec"]["containers"][0]["command"])
    token = json.loads(plan.files[pacing.TICKET])["token"]
    assert len(token) >= 40 and token not in json.dumps(pod)


async def test_a_pod_whose_ticket_is_refused_stops_saying_why(
    paced: KubernetesPlatform, disk: Path
) -> None:
    # Given a conversion pod whose ticket the broker does not know (its conversion ended
    # here, or the replica that opened it restarted)
    plan = planned(paced, Budget(), disk)
    pod = workload(plan, disk, "sleep 60")

    # When it runs without the ticket open
    log = io.BytesIO()
    status = await asyncio.wait_for(paced.run_workload(pod, log), 60)

    # Then its command was stopped at the first refusal, and the pod failed saying why
    text = log.getvalue().decode(errors="replace")
    assert status == podpace.REFUSED, text
    assert "conversion-service refused a bandwidth grant" in text and "this pod stops" in text
    # (never showing the ticket's token)
    assert json.loads(plan.files[pacing.TICKET])["token"] not in text
