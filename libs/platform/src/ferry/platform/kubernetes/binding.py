"""pvcinit: one pod that uses every pending claim of a VM, so the scheduler places them together.

On ``WaitForFirstConsumer`` storage nothing is provisioned until a scheduled pod
uses a claim: the scheduler then writes ``volume.kubernetes.io/selected-node`` on
each claim the pod uses and the provisioner makes the volume on that node. A
populator's claim is never provisioned (the provisioner leaves claims whose
``dataSourceRef`` names a populator alone), but the populator waits for that same
annotation before it makes its prime claim on the node (lib-volume-populator).
So the pod mounts the populator claims too, as Forklift's does: left out, they
never get a node and the population never starts.

Done means: every DataVolume claim is ``Bound``, and every populator claim on a
``WaitForFirstConsumer`` class has its selected node. A populator claim on an
``Immediate`` class is left out of the pod (the scheduler refuses a pod with an
unbound immediate claim, and such a claim needs no node). A class that does not
exist is a permanent error naming it, rather than a pod that waits forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from ferry.platform.kubernetes import objects
from ferry.platform.kubernetes.client import POD, PVC, STORAGE_CLASS, KubeClient
from ferry.platform.settings import KubernetesSettings
from ferry.platform.volumes import Phase, VolumeError, VolumeState
from ferry.proto.volume import VolumeSource

SELECTED_NODE = "volume.kubernetes.io/selected-node"
WAIT_FOR_FIRST_CONSUMER = "WaitForFirstConsumer"


class BindTimeout(VolumeError):
    """pvcinit: the claims did not all bind in time; the scheduler's message says why."""

    permanent = False


def _reason(obj: dict[str, Any]) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("message") and condition.get("status") != "True":
            return str(condition["message"])
    return ""


def _ready(claim: dict[str, Any] | None, populator: bool) -> bool:
    if claim is None:
        return False
    if populator:
        return bool((claim.get("metadata", {}).get("annotations") or {}).get(SELECTED_NODE))
    return (claim.get("status") or {}).get("phase") == "Bound"


class Pvcinit:
    def __init__(self, client: KubeClient, settings: KubernetesSettings) -> None:
        self.client = client
        self.settings = settings

    async def _waits_for_consumer(self, storage_class: str) -> bool:
        if not storage_class:
            return False  # the default class: the pod would tell us if it waits
        found = await self.client.get(STORAGE_CLASS, "", storage_class)
        if found is None:
            raise VolumeError(f"storage class {storage_class!r} does not exist in the cluster")
        return found.get("volumeBindingMode") == WAIT_FOR_FIRST_CONSUMER

    async def bind(
        self, namespace: str, migration: str, vm: str, states: Sequence[VolumeState]
    ) -> bool:
        """Run the pod until every pending claim is placed; False when there was nothing to do."""
        pending: list[VolumeState] = []
        for state in states:
            if state.pv or state.phase != Phase.PENDING:
                continue
            if state.source == VolumeSource.POPULATOR:
                if not await self._waits_for_consumer(state.storage_class):
                    continue
                claim = await self.client.get(PVC, namespace, state.name)
                if _ready(claim, populator=True):
                    continue
            pending.append(state)
        if not pending:
            return False
        if not self.settings.pvcinit_image:
            raise VolumeError("kubernetes platform: pvcinit_image is not set; cannot bind volumes")
        deadline = int(self.settings.bind_timeout)
        claims = [(s.name, s.volume_mode) for s in pending]
        pod = objects.pvcinit_pod(
            namespace, migration, vm, claims, self.settings.pvcinit_image, deadline
        )
        objects.validate_object(pod)
        name = pod["metadata"]["name"]
        if await self.client.get(POD, namespace, name) is None:
            await self.client.create(POD, pod)
        try:
            await self._wait(namespace, pending, name)
        finally:
            await self.client.delete(POD, namespace, name, grace_seconds=0)
        return True

    async def _wait(self, namespace: str, pending: Sequence[VolumeState], pod: str) -> None:
        limit = time.monotonic() + self.settings.bind_timeout
        while True:
            waiting = []
            for state in pending:
                claim = await self.client.get(PVC, namespace, state.name)
                if not _ready(claim, populator=state.source == VolumeSource.POPULATOR):
                    waiting.append(state.name)
            if not waiting:
                return
            if time.monotonic() >= limit:
                found = await self.client.get(POD, namespace, pod)
                why = _reason(found or {}) or "no scheduler message"
                raise BindTimeout(
                    f"claims {', '.join(waiting)} not placed within "
                    f"{self.settings.bind_timeout:g} s: {why}"
                )
            await asyncio.sleep(self.settings.poll_seconds)
