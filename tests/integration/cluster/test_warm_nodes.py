"""Flow 1 on a cluster of two nodes: a VM's claims end on one node.

Each of Ferry's transfer pods uses one claim; on WaitForFirstConsumer storage the
first pod to use a claim decides its node, and the scheduler spreads pods. So the
itinerary binds the VM's claims first (AllocateDisks: ``bind_volumes``, one pvcinit
pod using them all), as flows 2 and 3 do; round 0's pods then run where the claims
are, and the VM can later start on them.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.providers.ovirt.provider import OvirtProvider
from ferry.testing import libvirtd
from ferry.testing.cluster import resources
from ferry.testing.cluster.binder import volume_nodes
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.ovirt.warmguest import (  # noqa: F401 - fixtures: guest, engine, provider
    DATA,
    FILL,
    VM,
    engine_fixture,
    expected,
    guest_fixture,
    provider_fixture,
)

sys.path.insert(0, str(Path(__file__).parent))
from standin_images import CLASSES, FERRY_IMAGE, TOOLS_IMAGE, ferry_image_env
from test_warm_rounds import NS, claims, copy_round, data

NODES = ("node-1", "node-2")


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    images = {TOOLS_IMAGE: {"PATH": "/usr/bin:/bin"}, FERRY_IMAGE: ferry_image_env()}
    async with Cluster(tmp_path / "cluster", CLASSES, images, NODES) as made:
        yield made


async def test_round_zero_after_allocate_disks_keeps_the_vms_claims_on_one_node(
    platform: KubernetesPlatform,
    cluster: Cluster,
    provider: OvirtProvider,
    guest: libvirtd.Guest,
) -> None:
    # Given the running VM's two importer claims on WaitForFirstConsumer storage
    vm = await provider.vm(VM)
    made = await claims(platform, provider)
    assert {v.pv for v in made.values()} == {""}  # nothing placed yet
    # When AllocateDisks binds them, and round 0 copies both disks at once
    await platform.bind_volumes(NS, "mig-1", vm.id)
    await copy_round(platform, provider, 0, "", final=False)
    # Then both claims' volumes are on one node, and hold their disks
    now = await claims(platform, provider)
    nodes = set()
    for state in now.values():
        pvc = cluster.get(resources.PVC, NS, state.name)
        assert pvc is not None
        pv = cluster.get(resources.PV, "", pvc["spec"]["volumeName"])
        assert pv is not None
        nodes.update(volume_nodes(pv))
    assert len(nodes) == 1, f"the VM's claims are on {sorted(nodes)}"
    root, extra = vm.disks[0].id, vm.disks[1].id
    assert data(cluster, now[root]) == bytes(expected(FILL))
    assert data(cluster, now[extra]) == bytes(DATA)
    # and no pvcinit pod is left
    left = cluster.store.list(resources.POD, NS)
    assert [p["metadata"]["name"] for p in left] == []
