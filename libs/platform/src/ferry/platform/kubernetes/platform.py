"""The whole kubernetes platform: :class:`KubeVolumes` and :class:`KubeVms` on one client.

Workloads (the conversion pod) run as pods through :class:`KubeWorkloads`. The grant
broker (:mod:`~ferry.platform.kubernetes.pacing`) is made with the platform, and its
route is what :meth:`KubernetesPlatform.http_routes` offers the service: the
volume-service's transfer and populator pods ask it, and so do the conversion-service's
conversion pods under a budget (:meth:`KubernetesPlatform.remote_pace`).

The API client is made on first use, not in the constructor, because loading a
kubeconfig is asynchronous and the factory is not; ``aclose()`` releases its
connection pool. Forwarding is spelled out so that mypy checks this class
against the whole :class:`~ferry.platform.base.Platform` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from kubernetes_asyncio import config  # type: ignore[import-untyped,unused-ignore]
from kubernetes_asyncio.client import (  # type: ignore[import-untyped,unused-ignore]
    ApiClient,
    Configuration,
)

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes.client import KubeClient
from ferry.platform.kubernetes.pacing import Broker
from ferry.platform.kubernetes.vms import KubeVms
from ferry.platform.kubernetes.volumes import KubeVolumes
from ferry.platform.kubernetes.workloads import KubeWorkloads
from ferry.platform.settings import KubernetesSettings
from ferry.platform.vms import VmInfo
from ferry.platform.volumes import ProgressCallback, Rate, VolumeRequest, VolumeState
from ferry.platform.workloads import (
    LineHandler,
    Placed,
    RemotePace,
    Workload,
    WorkloadError,
)
from ferry.proto.inventory import DiskCopy, Volume

if TYPE_CHECKING:
    from ferry.platform.base import Platform

__all__ = ["KubernetesPlatform"]

log = logging.getLogger(__name__)


async def api_client(settings: KubernetesSettings) -> ApiClient:
    """An ``ApiClient`` for the configured cluster: explicit host, in-cluster, or kubeconfig.

    The API server's certificate is checked unless ``verify_ssl`` is off or the chosen
    kubeconfig context says ``insecure-skip-tls-verify`` (as kubectl honours it; said in
    the log, since nothing else would show it).
    """
    configuration = Configuration()
    if settings.host:
        configuration.host = settings.host
    elif settings.in_cluster:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call,unused-ignore]
    else:
        await config.load_kube_config(
            config_file=settings.kubeconfig or None,
            context=settings.context or None,
            client_configuration=configuration,
        )
        if not configuration.verify_ssl:
            log.warning(
                "the kubeconfig's context skips TLS verification (insecure-skip-tls-verify): "
                "the API server's certificate is not checked"
            )
    if not settings.verify_ssl:
        configuration.verify_ssl = False
    return ApiClient(configuration=configuration)


class KubernetesPlatform:
    workloads_run_here = False

    def __init__(self, settings: KubernetesSettings, api: ApiClient | None = None) -> None:
        self.settings = settings
        self._api = api
        self._lock = asyncio.Lock()
        self._volumes: KubeVolumes | None = None
        self._vms: KubeVms | None = None
        self._workloads: KubeWorkloads | None = None
        # made now, not on first use: the service mounts its route before any copy
        self.pacing = Broker()

    def http_routes(self) -> list[object]:
        """The grant broker's route, for the service's HTTP server (its pods ask it)."""
        return list(self.pacing.routes())

    def remote_pace(self, rate: Rate) -> RemotePace:
        """A conversion pod's grants against ``rate`` (:class:`~.pacing.PodPace`)."""
        if not self.settings.pacing_url:
            raise WorkloadError(
                "a bandwidth budget applies to this conversion, but its pod could not ask "
                "for grants: set platform.kubernetes.pacing_url (FERRY_PLATFORM__KUBERNETES__"
                "PACING_URL) to this conversion-service replica's HTTP address"
            )
        return self.pacing.remote(rate, self.settings.pacing_url)

    async def _ready(self) -> tuple[KubeVolumes, KubeVms]:
        async with self._lock:
            if self._volumes is None or self._vms is None:
                if self._api is None:
                    self._api = await api_client(self.settings)
                client = KubeClient(self._api)
                self._volumes = KubeVolumes(client, self.settings, self.pacing)
                self._vms = KubeVms(client, self.settings)
                self._workloads = KubeWorkloads(client, self.settings)
            return self._volumes, self._vms

    async def aclose(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None
            self._volumes = self._vms = None

    # volumes
    async def ensure_volume(self, request: VolumeRequest) -> VolumeState:
        return await (await self._ready())[0].ensure_volume(request)

    async def bind_volumes(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        return await (await self._ready())[0].bind_volumes(namespace, migration, vm)

    async def import_disk(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        return await (await self._ready())[0].import_disk(volume, source, progress, rate=rate)

    async def populate(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        return await (await self._ready())[0].populate(volume, source, progress, rate=rate)

    async def apply_changes(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        last: bool = False,
        rate: Rate | None = None,
    ) -> DiskCopy:
        volumes = (await self._ready())[0]
        return await volumes.apply_changes(volume, source, progress, last=last, rate=rate)

    async def list_volumes(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        return await (await self._ready())[0].list_volumes(namespace, labels)

    async def get_volume(self, namespace: str, name: str) -> VolumeState | None:
        return await (await self._ready())[0].get_volume(namespace, name)

    async def delete_temporary_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        return await (await self._ready())[0].delete_temporary_volumes(namespace, migration, vm)

    async def delete_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        return await (await self._ready())[0].delete_volumes(namespace, migration, vm)

    # VirtualMachines
    async def create_vm(self, manifest: Mapping[str, Any], volumes: Sequence[Volume]) -> VmInfo:
        return await (await self._ready())[1].create_vm(manifest, volumes)

    async def get_vm(self, namespace: str, name: str) -> VmInfo | None:
        return await (await self._ready())[1].get_vm(namespace, name)

    async def find_vm(self, namespace: str, labels: Mapping[str, str]) -> VmInfo | None:
        return await (await self._ready())[1].find_vm(namespace, labels)

    async def start_vm(self, namespace: str, name: str) -> VmInfo:
        return await (await self._ready())[1].start_vm(namespace, name)

    async def wait_running(self, namespace: str, name: str, time_limit: float) -> VmInfo:
        return await (await self._ready())[1].wait_running(namespace, name, time_limit)

    async def stop_vm(self, namespace: str, name: str) -> VmInfo:
        return await (await self._ready())[1].stop_vm(namespace, name)

    async def delete_vm(self, namespace: str, name: str) -> bool:
        return await (await self._ready())[1].delete_vm(namespace, name)

    # workloads
    async def place_volumes(self, namespace: str, volumes: Sequence[Volume]) -> dict[str, Placed]:
        await self._ready()
        assert self._workloads is not None
        return await self._workloads.place_volumes(namespace, volumes)

    async def run_workload(
        self, workload: Workload, log: BinaryIO, on_line: LineHandler | None = None
    ) -> int:
        if not self.settings.conversion_image:  # before any connection: a setup error
            raise WorkloadError("kubernetes platform: conversion_image is not set; cannot run pods")
        await self._ready()
        assert self._workloads is not None
        return await self._workloads.run_workload(workload, log, on_line)


if TYPE_CHECKING:

    def _conforms(platform: KubernetesPlatform) -> Platform:
        return platform
