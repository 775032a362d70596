"""The kubernetes platform against kmock, an in-process Kubernetes API stand-in.

A real kubernetes-asyncio ``ApiClient`` talks HTTP to kmock's
``KubernetesEmulator``, which stores objects, lists, patches, deletes and
streams watch events. Where a cluster has controllers (CDI making a claim and
reporting progress, the scheduler binding claims, KubeVirt running an
instance) the test plays them through the same HTTP API, marked with an
``X-Actor: controller`` header so that Ferry's own requests can be told apart.

What this proves: the requests Ferry sends (paths, verbs, merge-patch bodies,
label selectors), that every object it creates passes the real KubeVirt/CDI/
core schemas (re-checked here on what the server *received*), idempotency by
labels, 409/403 handling, and how Ferry reads the status a controller writes.
What it does not prove: that a real API server, CDI, a populator or KubeVirt
behave as played here. kmock ignores label and field selectors (Ferry filters
again itself), runs no admission, and never fills a volume or boots a guest.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import msgspec
import pytest

from ferry.platform import factory, kubevirt
from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import objects
from ferry.platform.kubernetes.binding import BindTimeout
from ferry.platform.kubernetes.client import Forbidden
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.schemas import SchemaValidationError
from ferry.platform.settings import KubernetesSettings, PlatformSettings
from ferry.platform.vms import BootFailed, VmConflict, VmPhase
from ferry.platform.volumes import (
    Phase,
    TransferProgress,
    VolumeConflict,
    VolumeError,
    VolumeRequest,
    labels_for,
    required_size,
    volume_name,
)
from ferry.proto.inventory import (
    Disk,
    NetworkTarget,
    Nic,
    ProviderType,
    Vm,
    Volume,
    VolumeMode,
    VolumeTarget,
)
from ferry.proto.volume import VolumeSource

NS = "migrated"
GiB = 1 << 30
DV_PATH = f"/apis/cdi.kubevirt.io/v1beta1/namespaces/{NS}/datavolumes"
PVC_PATH = f"/api/v1/namespaces/{NS}/persistentvolumeclaims"
POD_PATH = f"/api/v1/namespaces/{NS}/pods"
VM_PATH = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachines"
VMI_PATH = f"/apis/kubevirt.io/v1/namespaces/{NS}/virtualmachineinstances"
CR_PATH = f"/apis/populators.ferry.dev/v1alpha1/namespaces/{NS}/ferryvolumepopulators"
RESOURCES = (
    "v1/persistentvolumeclaims",
    "v1/pods",
    "v1/secrets",
    "cdi.kubevirt.io/v1beta1/datavolumes",
    "kubevirt.io/v1/virtualmachines",
    "kubevirt.io/v1/virtualmachineinstances",
    "populators.ferry.dev/v1alpha1/ferryvolumepopulators",
)


class Controller:
    """Plays CDI, the scheduler and KubeVirt through the API, as they would."""

    def __init__(self, url: str) -> None:
        self.session = aiohttp.ClientSession(base_url=url, headers={"X-Actor": "controller"})

    async def post(self, path: str, obj: dict[str, Any]) -> None:
        # A real API server fills in the namespace from the path; kmock does not.
        obj = {**obj, "metadata": {"namespace": NS, **obj["metadata"]}}
        async with self.session.post(path, json=obj) as response:
            assert response.status < 300, await response.text()

    async def patch(self, path: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.session.patch(path, json=body, headers=headers) as response:
            assert response.status < 300, await response.text()

    async def delete(self, path: str) -> None:
        async with self.session.delete(path) as response:
            assert response.status < 300, await response.text()

    async def get(self, path: str) -> dict[str, Any] | None:
        async with self.session.get(path) as response:
            if response.status == 404:
                return None
            result: dict[str, Any] = await response.json()
            return result

    async def claim_for(self, dv: str, phase: str = "Pending") -> None:
        """What CDI does for a DataVolume: a PVC of the same name."""
        claim = {"metadata": {"name": dv, "namespace": NS}, "status": {"phase": phase}}
        await self.post(PVC_PATH, claim)

    async def bind(self, claim: str) -> None:
        await self.patch(
            f"{PVC_PATH}/{claim}",
            {"spec": {"volumeName": f"pv-{claim}"}, "status": {"phase": "Bound"}},
        )


@pytest.fixture
async def cluster() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock):
        for resource in RESOURCES:
            mock.resources[resource] = kmock.ResourceInfo()
        yield mock


@pytest.fixture
async def controller(cluster: kmock.KubernetesEmulator) -> AsyncIterator[Controller]:
    played = Controller(str(cluster.url))
    yield played
    await played.session.close()


def make_platform(cluster: kmock.KubernetesEmulator, **changes: Any) -> KubernetesPlatform:
    settings = {
        "host": str(cluster.url).rstrip("/"),
        "pvcinit_image": "busybox:stable",
        "poll_seconds": 0.02,
        "bind_timeout": 2,
        "transfer_timeout": 10,
        "stop_timeout": 10,
        **changes,
    }
    made = factory.create(
        PlatformSettings(kind="kubernetes", kubernetes=KubernetesSettings.model_validate(settings)),
        data_dir=Path("unused"),
    )
    assert isinstance(made, KubernetesPlatform)
    return made


@pytest.fixture
async def platform(cluster: kmock.KubernetesEmulator) -> AsyncIterator[KubernetesPlatform]:
    made = make_platform(cluster)
    yield made
    await made.aclose()


def sent(cluster: kmock.KubernetesEmulator, method: str) -> list[Any]:
    """Ferry's own requests of ``method`` (not the played controllers')."""
    return [r for r in cluster[method] if r.headers.get("X-Actor") != "controller"]


def created(cluster: kmock.KubernetesEmulator) -> list[dict[str, Any]]:
    """Every object Ferry POSTed, each checked again against its schema as received."""
    bodies = [dict(r.data) for r in sent(cluster, "post")]
    for body in bodies:
        objects.validate_object(body)
    return bodies


def request(
    disk: str = "d1",
    source: VolumeSource = VolumeSource.BLANK,
    capacity: int = 10 * GiB,
    mode: VolumeMode = VolumeMode.FILESYSTEM,
) -> VolumeRequest:
    return VolumeRequest(
        namespace=NS,
        migration="mig-1",
        vm="vm-42",
        vm_name="web01",
        disk_id=disk,
        capacity=capacity,
        target=VolumeTarget(disk_id=disk, storage_class="fast", volume_mode=mode),
        source=source,
    )


async def observed(seen: list[TransferProgress], share: float) -> None:
    """Wait until Ferry has reported ``share`` percent: the played controller then moves on."""
    while not any(p.done == int(p.total * share / 100) for p in seen):
        await asyncio.sleep(0.01)


# -- volumes -------------------------------------------------------------------------


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


async def test_importer_volume_waits_for_an_upload(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given an OVA disk, which no cluster pod can reach
    # When its importer volume is ensured
    await platform.ensure_volume(request(source=VolumeSource.IMPORTER))

    # Then the DataVolume's source is an upload (CDI's upload proxy receives the bytes)
    [dv] = created(cluster)
    assert dv["spec"]["source"] == {"upload": {}}
    assert dv["metadata"]["annotations"][objects.ANNOTATION_KEEP_DV] == "false"


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


async def test_import_reports_datavolume_progress_until_succeeded(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given an importer volume that CDI fills in steps
    volume = await platform.ensure_volume(request(source=VolumeSource.IMPORTER))
    path = f"{DV_PATH}/{volume.name}"

    seen: list[TransferProgress] = []

    async def cdi() -> None:
        for progress in (10.0, 55.5):
            patch = {"status": {"phase": "ImportInProgress", "progress": f"{progress}%"}}
            await controller.patch(path, patch)
            await observed(seen, progress)
        await controller.patch(path, {"status": {"phase": "Succeeded", "progress": "100.0%"}})

    playing = asyncio.create_task(cdi())

    # When the disk is imported
    copy = await platform.import_disk(volume, ImageRef(path="/unused.raw"), seen.append)
    await playing

    # Then progress followed status.progress, and the copy is what the cluster reported
    shares = sorted({round(p.done / p.total * 100, 1) for p in seen})
    assert 10.0 in shares and 55.5 in shares and shares[-1] == 100.0
    assert all(p.total == 10 * GiB for p in seen)
    assert copy.bytes_copied == 10 * GiB
    assert copy.source.algorithm == "unverified"
    state = await platform.get_volume(NS, volume.name)
    assert state is not None and state.phase == Phase.SUCCEEDED


async def test_a_failed_datavolume_fails_the_import_with_cdis_reason(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given an importer DataVolume that CDI reports Failed
    volume = await platform.ensure_volume(request(source=VolumeSource.IMPORTER))
    condition = {"type": "Running", "status": "False", "message": "Unable to process data"}
    await controller.patch(
        f"{DV_PATH}/{volume.name}", {"status": {"phase": "Failed", "conditions": [condition]}}
    )

    # When it is imported
    # Then the import fails with CDI's message
    with pytest.raises(VolumeError, match="Unable to process data"):
        await platform.import_disk(volume, ImageRef(path="/unused.raw"))


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


# -- VirtualMachines -------------------------------------------------------------------

OWNER = kubevirt.Owner(plan="plan-a", migration="mig-1", vm_id="vm-42")


def manifest(run: bool = False) -> dict[str, Any]:
    vm = Vm(
        id="vm-42",
        name="web01",
        provider_type=ProviderType.VSPHERE,
        disks=[Disk(id="d1", name="Hard disk 1", capacity=10 * GiB)],
        nics=[Nic(id="n1", name="nic", mac="00:50:56:ab:cd:ef")],
    )
    return kubevirt.build(
        vm,
        inspection=None,
        volumes=[Volume(disk_id="d1", name="web01-d1", size=10 * GiB)],
        networks=[NetworkTarget(nic_id="n1")],
        target=kubevirt.Target(namespace=NS, run=run),
        owner=OWNER,
    )


async def test_create_vm_sends_a_valid_virtualmachine_once(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a built VirtualMachine
    # When it is created twice (a redelivered command)
    first = await platform.create_vm(manifest(), [])
    again = await platform.create_vm(manifest(), [])

    # Then one valid object was sent, and the second call found it by its labels
    [vm] = created(cluster)
    assert vm["kind"] == "VirtualMachine"
    assert vm["spec"]["runStrategy"] == "Halted"
    assert (first.existed, again.existed) == (False, True)
    assert first.phase == VmPhase.STOPPED
    found = await platform.find_vm(NS, OWNER.labels())
    assert found is not None and found.name == "web01"


async def test_create_vm_refuses_a_name_taken_by_another_owner(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given a VM called web01 that belongs to someone else
    await controller.post(VM_PATH, {"metadata": {"name": "web01", "labels": {"app": "x"}}})

    # When Ferry creates its web01
    # Then it gets a conflict, not someone else's VM
    with pytest.raises(VmConflict, match="web01"):
        await platform.create_vm(manifest(), [])


async def test_a_409_on_vm_create_returns_the_vm_that_won_the_race(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given our own VM exists (an earlier attempt) but the list Ferry reads is stale
    await controller.post(VM_PATH, manifest())
    stale: dict[str, list[Any]] = {"items": []}
    cluster[kmock.action.LIST, kmock.resource("kubevirt.io/v1/virtualmachines")] << stale

    # When Ferry creates it
    info = await platform.create_vm(manifest(), [])

    # Then the create got 409, and the VM there (same owner labels) is returned as existing
    assert len(sent(cluster, "post")) == 1
    assert info.existed is True
    assert info.labels == OWNER.labels() | info.labels


async def test_an_invalid_volume_is_never_sent(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a storage map with an access mode the API does not know
    bad = msgspec.structs.replace(
        request(),
        target=VolumeTarget(disk_id="d1", storage_class="fast", access_modes=["RWO"]),
    )

    # When the volume is ensured
    # Then validation refuses it and the API server saw no create
    with pytest.raises(SchemaValidationError, match="RWO"):
        await platform.ensure_volume(bad)
    assert sent(cluster, "post") == []


async def test_an_invalid_manifest_is_never_sent(
    platform: KubernetesPlatform, cluster: kmock.KubernetesEmulator
) -> None:
    # Given a VirtualMachine with a typo in runStrategy's name
    broken = manifest()
    broken["spec"]["runstrategy"] = broken["spec"].pop("runStrategy")

    # When it is created
    # Then validation refuses it and the API server saw no create
    with pytest.raises(SchemaValidationError, match="runstrategy"):
        await platform.create_vm(broken, [])
    assert sent(cluster, "post") == []


async def test_start_wait_stop_delete(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given a created, halted VM
    await platform.create_vm(manifest(), [])

    async def kubevirt_controller() -> None:
        # KubeVirt sees runStrategy Always, makes the instance, which boots and gets Ready.
        while (await controller.get(f"{VM_PATH}/web01") or {})["spec"]["runStrategy"] != "Always":
            await asyncio.sleep(0.01)
        await controller.post(
            VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Scheduled"}}
        )
        await asyncio.sleep(0.1)
        ready = {"type": "Ready", "status": "True"}
        await controller.patch(
            f"{VMI_PATH}/web01", {"status": {"phase": "Running", "conditions": [ready]}}
        )

    playing = asyncio.create_task(kubevirt_controller())

    # When it is started and waited for
    started = await platform.start_vm(NS, "web01")
    running = await platform.wait_running(NS, "web01", time_limit=5)
    await playing

    # Then the start was a merge patch of runStrategy, and the instance is running
    [patch] = sent(cluster, "patch")
    assert patch.headers["Content-Type"] == "application/merge-patch+json"
    assert patch.data == {"spec": {"runStrategy": "Always"}}
    assert started.phase == VmPhase.STARTING
    assert running.phase == VmPhase.RUNNING
    # And starting again changes nothing
    await platform.start_vm(NS, "web01")
    assert len(sent(cluster, "patch")) == 1

    async def shutdown() -> None:
        while (await controller.get(f"{VM_PATH}/web01") or {})["spec"]["runStrategy"] != "Halted":
            await asyncio.sleep(0.01)
        await controller.delete(f"{VMI_PATH}/web01")

    playing = asyncio.create_task(shutdown())

    # When it is stopped
    stopped = await platform.stop_vm(NS, "web01")
    await playing

    # Then it is Halted and its instance is gone
    assert stopped.phase == VmPhase.STOPPED
    assert sent(cluster, "patch")[-1].data == {"spec": {"runStrategy": "Halted"}}

    # When it is deleted, twice
    # Then the first deletes and the second finds nothing
    assert await platform.delete_vm(NS, "web01") is True
    assert await platform.delete_vm(NS, "web01") is False
    assert await platform.get_vm(NS, "web01") is None


async def test_a_failed_instance_fails_the_wait(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given a started VM whose instance fails
    await platform.create_vm(manifest(run=True), [])
    await controller.post(
        VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Failed", "reason": "boom"}}
    )

    # When it is waited for
    # Then the wait fails with KubeVirt's reason
    with pytest.raises(BootFailed, match="boom"):
        await platform.wait_running(NS, "web01", time_limit=5)


async def test_an_instance_that_never_runs_times_out(
    platform: KubernetesPlatform, controller: Controller
) -> None:
    # Given a started VM whose instance stays Scheduling
    await platform.create_vm(manifest(run=True), [])
    await controller.post(
        VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Scheduling"}}
    )

    # When it is waited for with a short limit
    # Then it fails, naming the limit and the last phase seen
    with pytest.raises(BootFailed, match=r"within 0.5 s \(instance: Scheduling\)"):
        await platform.wait_running(NS, "web01", time_limit=0.5)


async def test_stop_forces_an_instance_that_does_not_shut_down(
    platform: KubernetesPlatform,
    cluster: kmock.KubernetesEmulator,
    controller: Controller,
) -> None:
    # Given a running VM whose guest ignores ACPI shutdown
    await platform.create_vm(manifest(run=True), [])
    await controller.post(VMI_PATH, {"metadata": {"name": "web01"}, "status": {"phase": "Running"}})

    # When it is stopped with a short stop_timeout
    impatient = make_platform(cluster, stop_timeout=0.3)
    try:
        await impatient.stop_vm(NS, "web01")
    finally:
        await impatient.aclose()

    # Then after the limit its instance was deleted with no grace period
    [forced] = [r for r in sent(cluster, "delete") if "/virtualmachineinstances/" in r.url.path]
    assert forced.data["gracePeriodSeconds"] == 0
