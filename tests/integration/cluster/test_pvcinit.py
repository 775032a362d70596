"""AllocateDisks on WaitForFirstConsumer storage, against the strict stand-in."""

from __future__ import annotations

import pytest

from ferry.platform.kubernetes.binding import SELECTED_NODE
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import Phase, VolumeError, VolumeRequest
from ferry.proto.inventory import VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

NS = "migrated"
MiB = 1 << 20


def request(disk: str, source: VolumeSource, storage_class: str = "wffc") -> VolumeRequest:
    target = VolumeTarget(disk_id=disk, storage_class=storage_class, volume_mode=VolumeMode.BLOCK)
    return VolumeRequest(
        namespace=NS,
        migration="mig-1",
        vm="vm-1",
        vm_name="web",
        disk_id=disk,
        capacity=8 * MiB,
        target=target,
        source=source,
    )


async def test_pvcinit_places_populator_claims_with_the_vms_other_claims(
    platform: KubernetesPlatform, cluster: Cluster
) -> None:
    # Given a VM with a blank disk and a populator disk, both on WaitForFirstConsumer storage
    blank = await platform.ensure_volume(request("d1", VolumeSource.BLANK))
    populated = await platform.ensure_volume(request("d2", VolumeSource.POPULATOR))

    # When its disks are allocated
    states = {s.name: s for s in await platform.bind_volumes(NS, "mig-1", "vm-1")}

    # Then the blank claim is bound, and the populator claim has the same selected node
    # (the populator can now make its prime claim there) but is left for the populator
    assert states[blank.name].phase == Phase.BOUND
    blank_claim = cluster.get(resources.PVC, NS, blank.name)
    claim = cluster.get(resources.PVC, NS, populated.name)
    assert blank_claim is not None and claim is not None
    node = blank_claim["metadata"]["annotations"][SELECTED_NODE]
    assert claim["metadata"]["annotations"][SELECTED_NODE] == node
    assert claim["status"]["phase"] == "Pending"
    # And the pvcinit pod is gone
    assert cluster.store.list(resources.POD, NS) == []


async def test_a_storage_class_that_does_not_exist_is_named(
    platform: KubernetesPlatform,
) -> None:
    # Given a populator disk mapped to a class the cluster does not have
    await platform.ensure_volume(request("d1", VolumeSource.POPULATOR, storage_class="nope"))

    # When its disks are allocated, Then the error names the class
    with pytest.raises(VolumeError, match="storage class 'nope' does not exist"):
        await platform.bind_volumes(NS, "mig-1", "vm-1")
