"""Get the target platform the settings name; services never import an implementation.

``create(settings.platform, data_dir=settings.data_dir)`` is the one way a service
gets its platform: ``kind`` local gives the embedded platform (files, child
processes, QEMU), ``kind`` kubernetes drives a cluster with KubeVirt and CDI (its
client connects on first use). Implementations are imported here, lazily, so that
using one never loads the other's dependencies.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ferry.platform.base import Platform
from ferry.platform.clusterobjects import ClusterObjects
from ferry.platform.settings import KubernetesSettings, PlatformSettings

NAMES = ("local", "kubernetes")

log = logging.getLogger(__name__)


class UnknownPlatform(ValueError):
    """The settings name a platform Ferry does not have."""


def create(settings: PlatformSettings, *, data_dir: Path) -> Platform:
    """The platform ``settings.kind`` names, configured from its own sub-group.

    ``data_dir`` is the service's data directory: the local platform keeps its VMs
    there and, unless a storage root is set, its volumes under ``<data_dir>/storage``.
    """
    if settings.kind == "local":
        from ferry.platform.local.platform import LocalPlatform

        log.info("target platform: local (data dir %s)", data_dir)
        return LocalPlatform(settings.local, Path(data_dir))
    if settings.kind == "kubernetes":
        from ferry.platform.kubernetes.platform import KubernetesPlatform

        # Says how it will connect, never with what: a kubeconfig may embed credentials.
        kube = settings.kubernetes
        how = "API host" if kube.host else "in-cluster" if kube.in_cluster else "kubeconfig"
        log.info("target platform: kubernetes (%s)", how)
        return KubernetesPlatform(kube)
    raise UnknownPlatform(f"unknown platform {settings.kind!r}; choose one of {', '.join(NAMES)}")


def cluster_objects(settings: KubernetesSettings) -> ClusterObjects:
    """Ferry's own objects in the cluster ``settings`` connect to (operator mode, and
    ``ferry --context``); the client connects on first use."""
    from ferry.platform.kubernetes.ferryobjects import KubeFerryObjects

    return KubeFerryObjects(settings)
