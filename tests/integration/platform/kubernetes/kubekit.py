"""Helpers of the kubernetes platform tests against kmock, an in-process Kubernetes API
stand-in (fixtures in this folder's conftest).

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
from pathlib import Path
from typing import Any

import aiohttp
import kmock

from ferry.platform import factory, kubevirt
from ferry.platform.kubernetes import objects
from ferry.platform.kubernetes.platform import KubernetesPlatform
from ferry.platform.settings import KubernetesSettings, PlatformSettings
from ferry.platform.volumes import (
    TransferProgress,
    VolumeRequest,
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
