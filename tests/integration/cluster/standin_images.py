"""The images the cluster stand-in's kubelet runs, for the fixtures and the tests, and
what the four-service e2e tests share: their cluster, the services' settings, the
objects the services posted.

A module of its own, not the ``conftest``: another test directory's ``conftest`` may
be the one imported under that name when both are collected.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ferry.platform.kubernetes import fill, objects
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster

TOOLS_IMAGE = "ferry/tools:test"  # pvcinit and shell tools: the host's /usr/bin
# Ferry's own image (the populator pod): this checkout's interpreter and packages.
FERRY_IMAGE = "ferry/ferry:test"
# The conversion image (Dockerfile.conversion): the virt tools (the host's /usr/bin) and
# Ferry's packages, which a conversion pod under a budget runs its pacer from.
CONVERSION_IMAGE = "ferry/conversion:test"
CLASSES = {"wffc": "WaitForFirstConsumer", "immediate": "Immediate"}


def ferry_image_env() -> dict[str, str]:
    """Ferry's image: this interpreter, and this checkout's sources where ``PYTHONPATH``
    puts them before the installed ones (a worktree run against another's venv)."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@contextlib.asynccontextmanager
async def e2e_cluster(root: Path) -> AsyncIterator[Cluster]:
    """A stand-in with one WaitForFirstConsumer class, ``standard`` (the StorageMaps'),
    both images, and Ferry's populator CRD."""
    images = {
        TOOLS_IMAGE: {"PATH": "/usr/bin:/bin"},
        FERRY_IMAGE: ferry_image_env(),
        CONVERSION_IMAGE: ferry_image_env(),
    }
    async with Cluster(root, {"standard": "WaitForFirstConsumer"}, images) as made:
        made.install_crd(objects.POPULATOR_CRD)
        yield made


def services_env(cluster: Cluster, **settings: str) -> dict[str, str]:
    """The four services on the kubernetes platform, pointed at ``cluster``; ``settings``
    adds ``FERRY_…`` settings."""
    return {
        "FERRY_PLATFORM__KIND": "kubernetes",
        "FERRY_PLATFORM__KUBERNETES__HOST": cluster.url,
        "FERRY_PLATFORM__KUBERNETES__PVCINIT_IMAGE": TOOLS_IMAGE,
        "FERRY_PLATFORM__KUBERNETES__POPULATOR_IMAGE": FERRY_IMAGE,
        "FERRY_PLATFORM__KUBERNETES__CONVERSION_IMAGE": CONVERSION_IMAGE,
        "FERRY_PLATFORM__KUBERNETES__POLL_SECONDS": "0.2",
        **settings,
    }


def own_pacing_url(service: str, port: int) -> dict[str, str]:
    """Each service process's pods ask that process's own HTTP port for bandwidth grants
    (the chart's ``$(POD_IP):port``; a ticket lives in the replica that opened it)."""
    return {"FERRY_PLATFORM__KUBERNETES__PACING_URL": f"http://127.0.0.1:{port}"}


def posted(cluster: Cluster, plural: str, prefix: str = "") -> list[dict[str, Any]]:
    """The bodies of the objects of ``plural`` created through the API, by name prefix."""
    return [
        r.body
        for r in cluster.api.requests
        if r.method == "POST" and r.path.split("/")[-1] == plural
        if r.body["metadata"]["name"].startswith(prefix)
    ]


def volume_image(pv: dict[str, Any]) -> Path:
    """The file holding a PersistentVolume's bytes: its host path (Block) or the disk
    image in that directory (Filesystem)."""
    backing = Path(pv["spec"]["hostPath"]["path"])
    return backing / fill.FILESYSTEM_IMAGE if backing.is_dir() else backing


def claim_image(cluster: Cluster, namespace: str, claim: str) -> Path:
    """The file holding the bytes of the volume ``claim`` is bound to."""
    bound = cluster.get(resources.PVC, namespace, claim)
    assert bound is not None, f"claim {namespace}/{claim} is gone"
    pv = cluster.get(resources.PV, "", bound["spec"]["volumeName"])
    assert pv is not None, f"the volume of claim {namespace}/{claim} is gone"
    return volume_image(pv)
