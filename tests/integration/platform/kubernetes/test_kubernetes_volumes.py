"""The kubernetes platform against kmock, an in-process API stand-in: volumes
(DataVolumes, populator claims, pvcinit, progress, clean-up).

What the stand-in is, what it proves and what it does not: ``kubekit``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kmock
import msgspec
import pytest
from kubekit import (
    DV_PATH,
    NS,
    POD_PATH,
    Controller,
    GiB,
    created,
    request,
    sent,
)

from ferry.platform.kubernetes.binding import BindTimeout
from ferry.platform.kubernetes.client import Forbidden
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.volumes import (
    Phase,
    VolumeConflict,
    labels_for,
    required_size,
    volume_name,
)
from ferry.proto.inventory import (
    VolumeMode,
)
from ferry.proto.volume import VolumeSource


async def test_blank_volume_is_a_valid_datavolume_with_the_targets_storage(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a 10 GiB disk mapped to a Block storage class
    # When its blank volume is ensured
    state = await platform.ensure_volume(request(mode=VolumeMode.BLOCK))

    # Then one DataVolume was sent, valid, blank, with the target's storage
    [dv] = created(cluster)
    assert dv["kind"] == "DataVolume"
    assert dv["spec"]["source"] == {"blank": {}}
    storage = dv["spec"]["storage"]
    assert storage["storageClassName"] == "fast"
    assert storage["volumeMode"] == "Block"
    assert storage["accessModes"] == ["ReadWriteOnce"]
    # CDI adds the filesystem overhead itself: Ferry asks for the aligned capacity
    assert storage["resources"]["requests"]["storage"] == str(10 * GiB)
    assert dv["metadata"]["labels"] == {
        "ferry.io/migration": "mig-1",
        "ferry.io/vm": "vm-42",
        "ferry.io/disk": "d1",
    }
    assert state.phase == Phase.PENDING
    assert state.source == VolumeSource.BLANK
    assert state.name == dv["metadata"]["name"]


async def test_importer_volume_is_a_plain_claim_for_ferrys_transfer_pods(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a disk of flow 1 (warm, or a cold importer copy)
    # When its importer volume is ensured
    state = await platform.ensure_volume(request(source=VolumeSource.IMPORTER))

    # Then it is one plain claim, no DataVolume and no dataSource: Ferry's pods fill it
    [pvc] = created(cluster)
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert "dataSource" not in pvc["spec"] and "dataSourceRef" not in pvc["spec"]
    assert pvc["metadata"]["labels"] == labels_for("mig-1", "vm-42", "d1")
    # sized as Ferry sizes a claim no CDI fills (the filesystem overhead added)
    wanted = required_size(10 * GiB, VolumeMode.FILESYSTEM, platform.settings.filesystem_overhead)
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(wanted)
    assert state.source == VolumeSource.IMPORTER and state.phase == Phase.PENDING
    # And a redelivered CreateVolumes finds it by its labels
    again = await platform.ensure_volume(request(source=VolumeSource.IMPORTER))
    assert again.name == state.name and len(created(cluster)) == 1


async def test_a_second_ensure_finds_the_volume_by_labels_and_creates_nothing(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a volume already ensured once
    first = await platform.ensure_volume(request())

    # When the same command is redelivered
    again = await platform.ensure_volume(request())

    # Then it is the same volume and nothing more was created
    assert again.name == first.name
    assert len(sent(cluster, "post")) == 1
    # And the label selector was asked for
    lists = [r for r in sent(cluster, "get") if "labelSelector" in r.params]
    assert "ferry.io/disk=d1" in lists[0].params["labelSelector"]


async def test_a_different_shape_under_the_same_labels_is_a_conflict(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a 10 GiB volume for disk d1
    await platform.ensure_volume(request())

    # When the same disk is asked for with 20 GiB
    # Then it is refused and nothing is created
    with pytest.raises(VolumeConflict, match="capacity"):
        await platform.ensure_volume(request(capacity=20 * GiB))
    assert len(sent(cluster, "post")) == 1


async def test_a_409_on_create_reads_what_won_the_race(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given the volume exists but the list Ferry reads is stale (it misses it)
    await platform.ensure_volume(request())
    stale: dict[str, list[Any]] = {"items": []}
    cluster[kmock.action.LIST, kmock.resource("cdi.kubevirt.io/v1beta1/datavolumes")] << stale

    # When the volume is ensured again
    state = await platform.ensure_volume(request())

    # Then the create got 409 and the existing DataVolume was read and returned
    assert len(sent(cluster, "post")) == 2
    assert state.disk_id == "d1"
    assert state.capacity == 10 * GiB


async def test_a_409_for_an_object_with_other_labels_is_a_conflict(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given someone else's DataVolume already has the name Ferry would use
    taken = volume_name("mig-1", "vm-42", "d1", "web01")
    await controller.post(DV_PATH, {"metadata": {"name": taken, "labels": {"app": "other"}}})

    # When Ferry ensures its volume
    # Then it refuses rather than adopting the stranger
    with pytest.raises(VolumeConflict, match="other labels"):
        await platform.ensure_volume(request())


async def test_populator_volume_is_a_claim_pointing_at_ferrys_populator_cr(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a disk that a populator will fill
    # When its volume is ensured
    state = await platform.ensure_volume(request(source=VolumeSource.POPULATOR))

    # Then the populator CR went first, then the claim that references it
    cr, pvc = created(cluster)
    assert cr["apiVersion"] == "populators.ferry.dev/v1alpha1"
    assert cr["spec"] == {
        "migration": "mig-1",
        "vm": "vm-42",
        "diskId": "d1",
        "capacity": 10 * GiB,
        "format": "raw",
    }
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["dataSourceRef"] == {
        "apiGroup": "populators.ferry.dev",
        "kind": "FerryVolumePopulator",
        "name": cr["metadata"]["name"],
    }
    # No CDI here: Ferry adds the filesystem overhead itself
    expected = required_size(10 * GiB, VolumeMode.FILESYSTEM)
    assert pvc["spec"]["resources"]["requests"]["storage"] == str(expected)
    assert state.size == expected
    # And ensuring again creates nothing (the CR is found, not re-posted)
    await platform.ensure_volume(request(source=VolumeSource.POPULATOR))
    assert len(sent(cluster, "post")) == 2


async def test_pvcinit_binds_all_claims_of_the_vm_with_one_pod_then_deletes_it(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given two blank volumes whose claims CDI made, Pending (WaitForFirstConsumer)
    one = await platform.ensure_volume(request("d1"))
    two = await platform.ensure_volume(request("d2", mode=VolumeMode.BLOCK))
    await controller.claim_for(one.name)
    await controller.claim_for(two.name)

    async def scheduler() -> None:
        # The scheduler places the pod; the provisioner binds every claim it mounts.
        while True:
            pods = (await controller.get(POD_PATH) or {}).get("items", [])
            if pods:
                for volume in pods[0]["spec"]["volumes"]:
                    await controller.bind(volume["persistentVolumeClaim"]["claimName"])
                return
            await asyncio.sleep(0.01)

    playing = asyncio.create_task(scheduler())

    # When the VM's volumes are bound
    states = await platform.bind_volumes(NS, "mig-1", "vm-42")
    await playing

    # Then one valid pod mounted both claims (Block as a device), and it is gone again
    pods = [body for body in created(cluster) if body["kind"] == "Pod"]
    assert len(pods) == 1
    container = pods[0]["spec"]["containers"][0]
    assert len(container["volumeMounts"]) == 1  # the Filesystem claim
    assert len(container["volumeDevices"]) == 1  # the Block claim
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pods[0]["spec"]["volumes"]}
    assert claims == {one.name, two.name}
    deletes = [r for r in sent(cluster, "delete") if "/pods/" in r.url.path]
    assert len(deletes) == 1
    assert await controller.get(f"{POD_PATH}/{pods[0]['metadata']['name']}") is None
    # And every volume is Bound to its PV
    assert {s.name: (s.phase, s.pv) for s in states} == {
        one.name: (Phase.BOUND, f"pv-{one.name}"),
        two.name: (Phase.BOUND, f"pv-{two.name}"),
    }


async def test_pvcinit_that_cannot_bind_fails_with_the_schedulers_reason(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given a blank volume whose pod the scheduler cannot place
    volume = await platform.ensure_volume(request())
    await controller.claim_for(volume.name)
    why = "0/3 nodes are available: 3 node(s) didn't find available persistent volumes to bind."

    async def scheduler() -> None:
        while True:
            pods = (await controller.get(POD_PATH) or {}).get("items", [])
            if pods:
                condition = {"type": "PodScheduled", "status": "False", "message": why}
                name = pods[0]["metadata"]["name"]
                await controller.patch(
                    f"{POD_PATH}/{name}", {"status": {"conditions": [condition]}}
                )
                return
            await asyncio.sleep(0.01)

    playing = asyncio.create_task(scheduler())

    # When the volumes are bound
    # Then it fails after bind_timeout with the scheduler's message, and the pod is removed
    with pytest.raises(BindTimeout, match="didn't find available persistent volumes"):
        await platform.bind_volumes(NS, "mig-1", "vm-42")
    await playing
    assert (await controller.get(POD_PATH) or {}).get("items") == []


async def test_forbidden_is_a_clear_permanent_error(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a service account that may not create DataVolumes
    def forbidden() -> None:
        raise kmock.KubernetesError(
            status=403, reason="Forbidden", message="datavolumes.cdi.kubevirt.io is forbidden"
        )

    cluster["post", kmock.resource("cdi.kubevirt.io/v1beta1/datavolumes")] << forbidden

    # When a volume is ensured
    # Then the error is permanent, says what was refused, and how to fix it
    with pytest.raises(Forbidden) as caught:
        await platform.ensure_volume(request())
    assert caught.value.permanent is True
    assert caught.value.status == 403
    assert "create DataVolume" in caught.value.reason
    assert "service account" in caught.value.reason


async def test_delete_temporary_then_all_volumes_by_labels(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given a blank DataVolume with its claim, and a populated claim with its CR
    blank = await platform.ensure_volume(request("d1"))
    await controller.claim_for(blank.name)
    filled = await platform.ensure_volume(request("d2", source=VolumeSource.POPULATOR))
    await controller.bind(filled.name)
    # and another VM's volume that must survive
    stranger = await platform.ensure_volume(msgspec.structs.replace(request("d9"), vm="vm-7"))

    # When temporary state is removed
    temporary = await platform.delete_temporary_volumes(NS, "mig-1", "vm-42")

    # Then only the populator CR of the filled claim went
    assert temporary == [f"FerryVolumePopulator/{filled.name}"]

    # When everything of the VM is removed
    removed = await platform.delete_volumes(NS, "mig-1", "vm-42")

    # Then both volumes are gone and the other VM's is untouched
    assert set(removed) == {blank.name, filled.name}
    assert await platform.list_volumes(NS, labels_for("mig-1", "vm-42")) == []
    assert [v.name for v in await platform.list_volumes(NS, labels_for("mig-1", "vm-7"))] == [
        stranger.name
    ]
