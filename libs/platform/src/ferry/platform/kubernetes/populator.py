"""Ferry's volume populator controller, by the rules of lib-volume-populator.

A populator claim (``dataSourceRef`` → a ``FerryVolumePopulator``) is never
provisioned by the storage: its populator makes the data elsewhere and hands
the volume over. This module is that populator, run by the volume-service for
the claims of its CopyDisks (the service reaches it through the platform's
``populate``). Its steps are upstream's (populator-machinery ``syncPvc``), each
one looked up before it is done, so a retried or resumed call continues where
the last stopped:

1. On a ``WaitForFirstConsumer`` class, wait for the target claim's
   ``volume.kubernetes.io/selected-node`` (pvcinit sets it; without it the
   population never starts, as upstream).
2. The prime claim ``populate-<target uid>``: same class, mode, access modes and
   size, with the selected node copied, so the storage provisions it there.
3. The populator pod of the same name on that node (Ferry's image, the copy
   engine of the local importer: :mod:`ferry.platform.kubernetes.fill`) writes the
   source into the prime claim. A failed pod is deleted and started again, up to
   :data:`ATTEMPTS`; then the populator object says Failed with the pod's reason.
4. The prime's PersistentVolume gets ``claimRef`` → the target claim (its reclaim
   policy untouched); the target binds to it and the prime becomes ``Lost``.
5. The prime claim, the pod and its job Secret are deleted.

Progress and the result (both checksums, read from the pod's log) are written on
the populator object's status, so a later call after the pod is gone still
returns what was copied. Everything made carries the VM's ownership labels and
``temporary``, so clean-up of the VM finds it, and never another VM's.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, fillpod, grants, objects
from ferry.platform.kubernetes.binding import SELECTED_NODE, WAIT_FOR_FIRST_CONSUMER
from ferry.platform.kubernetes.client import (
    POD,
    PV,
    PVC,
    SECRET,
    STORAGE_CLASS,
    AlreadyExists,
    KubeClient,
)
from ferry.platform.kubernetes.objects import POPULATOR
from ferry.platform.settings import KubernetesSettings
from ferry.platform.volumes import ProgressCallback, VolumeError, VolumeState
from ferry.proto import label
from ferry.proto.inventory import DiskCopy, VolumeMode

ATTEMPTS = 3  # populator pods started for one claim before the population fails


class PopulatorFailed(VolumeError):
    """The populator pod failed every attempt; the message is its last reason."""

    permanent = False


def prime_name(target: dict[str, Any]) -> str:
    return f"populate-{target['metadata']['uid']}"


def _labels(target: dict[str, Any]) -> dict[str, str]:
    owned = {k: v for k, v in (target["metadata"].get("labels") or {}).items()}
    return {**owned, label.TEMPORARY: "true"}


def prime_claim(target: dict[str, Any], node: str) -> dict[str, Any]:
    spec = target["spec"]
    annotations = {SELECTED_NODE: node} if node else {}
    fields = {k: spec[k] for k in ("accessModes", "volumeMode", "storageClassName") if k in spec}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": prime_name(target),
            "namespace": target["metadata"]["namespace"],
            "labels": _labels(target),
            "annotations": annotations,
        },
        "spec": {**fields, "resources": {"requests": dict(spec["resources"]["requests"])}},
    }


def job_secret(target: dict[str, Any], job: fill.Job) -> dict[str, Any]:
    meta = target["metadata"]
    return fillpod.job_secret(prime_name(target), meta["namespace"], _labels(target), job)


def populator_pod(target: dict[str, Any], node: str, image: str, deadline: int) -> dict[str, Any]:
    return fillpod.pod(
        prime_name(target),
        target["metadata"]["namespace"],
        _labels(target),
        claim=prime_name(target),
        block=target["spec"].get("volumeMode") == VolumeMode.BLOCK,
        node=node,
        image=image,
        deadline=deadline,
    )


pod_source = fillpod.pod_source
_phase = fillpod.phase


class Populator:
    def __init__(self, client: KubeClient, settings: KubernetesSettings) -> None:
        self.client = client
        self.settings = settings

    async def populate(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None,
        *,
        ticket: grants.Ticket | None = None,
    ) -> DiskCopy:
        """Run the steps until the claim is Bound with its data. ``ticket``: the pod asks
        it for each chunk's grant; a pod an earlier call started holds that call's
        closed ticket, is refused, fails as transient and is started again with this one."""
        namespace, name = volume.namespace, volume.name
        started = time.monotonic()
        attempts = 0
        while True:
            target = await self._require(PVC, namespace, name, "claim")
            cr = await self._require(POPULATOR, namespace, name, "populator object")
            result = (cr.get("status") or {}).get("result")
            if _phase(target) == "Bound" and result:
                await self._clean(target)
                return self._copy(volume, result)
            if _phase(target) == "Lost":
                raise VolumeError(f"claim {name} lost its PersistentVolume")
            node = await self._node(target)
            if node is None:
                self._check(volume, started, "no node was selected for it (was pvcinit run?)")
            else:
                pod = await self._ensure(target, node, volume, source, ticket)
                phase = _phase(pod)
                if phase == "Failed":
                    attempts += 1
                    reason = fillpod.reason(pod)
                    if attempts >= ATTEMPTS:
                        # the failed pod stays for its logs; the job's Secret never does
                        await self.client.delete(SECRET, namespace, prime_name(target))
                        await self._status(cr, {"phase": "Failed", "message": reason})
                        raise PopulatorFailed(f"populator of {name} failed: {reason}")
                    await self.client.delete(POD, namespace, prime_name(target), grace_seconds=0)
                elif phase == "Succeeded":
                    done = await fillpod.done(self.client, namespace, prime_name(target))
                    result = msgspec.to_builtins(done)
                    await self._status(cr, {"phase": "Rebinding", "progress": "100"})
                    await self._rebind(target)
                    await self._status(cr, {"phase": "Succeeded", "result": result})
                    continue  # the next turn sees the target Bound
                self._check(volume, started, f"the populator pod is {phase or 'not started'}")
            await asyncio.sleep(self.settings.poll_seconds)
            if progress is not None and node is not None:
                await fillpod.report(self.client, volume, prime_name(target), started, progress)

    # -- steps -----------------------------------------------------------------------

    async def _node(self, target: dict[str, Any]) -> str | None:
        """The node to populate on: "" when the class binds at once, None while waiting."""
        class_name = target["spec"].get("storageClassName") or ""
        found = await self.client.get(STORAGE_CLASS, "", class_name) if class_name else None
        if class_name and found is None:
            raise VolumeError(f"storage class {class_name!r} does not exist in the cluster")
        if (found or {}).get("volumeBindingMode") != WAIT_FOR_FIRST_CONSUMER:
            return ""
        node = (target["metadata"].get("annotations") or {}).get(SELECTED_NODE)
        return str(node) if node else None

    async def _ensure(
        self,
        target: dict[str, Any],
        node: str,
        volume: VolumeState,
        source: ImageRef,
        ticket: grants.Ticket | None,
    ) -> dict[str, Any]:
        namespace, name = target["metadata"]["namespace"], prime_name(target)
        reachable = pod_source(source)  # refused before anything is made for it
        if await self.client.get(PVC, namespace, name) is None:
            await self._create(PVC, prime_claim(target, node))
        pod = await self.client.get(POD, namespace, name)
        if pod is not None:
            return pod
        job = fillpod.job(volume, reachable, ticket)
        await self.client.delete(SECRET, namespace, name)  # a retry's job may differ
        await self._create(SECRET, job_secret(target, job))
        deadline = max(1, int(self.settings.transfer_timeout))
        image = self.settings.populator_image
        if not image:
            raise VolumeError("kubernetes platform: populator_image is not set")
        return await self._create(POD, populator_pod(target, node, image, deadline))

    async def _create(self, resource: Any, obj: dict[str, Any]) -> dict[str, Any]:
        objects.validate_object(obj)
        try:
            return await self.client.create(resource, obj)
        except AlreadyExists:
            meta = obj["metadata"]
            return await self.client.get(resource, meta["namespace"], meta["name"]) or obj

    async def _rebind(self, target: dict[str, Any]) -> None:
        """Hand the prime's volume to the target claim (upstream patches ``claimRef``)."""
        namespace = target["metadata"]["namespace"]
        prime = await self._require(PVC, namespace, prime_name(target), "prime claim")
        volume = (prime.get("spec") or {}).get("volumeName")
        if not volume:
            raise VolumeError(f"prime claim {prime_name(target)} has no volume")
        ref = {
            "namespace": namespace,
            "name": target["metadata"]["name"],
            "uid": target["metadata"]["uid"],
            "resourceVersion": None,  # the old claim's version means nothing to the new one
        }
        await self.client.patch(PV, "", volume, {"spec": {"claimRef": ref}})

    async def _clean(self, target: dict[str, Any]) -> None:
        namespace, name = target["metadata"]["namespace"], prime_name(target)
        await self.client.delete(POD, namespace, name, grace_seconds=0)
        await self.client.delete(SECRET, namespace, name)
        await self.client.delete(PVC, namespace, name)

    # -- small helpers ---------------------------------------------------------------

    async def _require(self, resource: Any, namespace: str, name: str, what: str) -> dict[str, Any]:
        found = await self.client.get(resource, namespace, name)
        if found is None:
            raise VolumeError(f"no {what} {namespace}/{name}")
        return found

    async def _status(self, cr: dict[str, Any], status: dict[str, Any]) -> None:
        meta = cr["metadata"]
        await self.client.patch(
            POPULATOR, meta["namespace"], meta["name"], {"status": status}, subresource="status"
        )

    def _check(self, volume: VolumeState, started: float, why: str) -> None:
        if time.monotonic() - started >= self.settings.transfer_timeout:
            raise PopulatorFailed(
                f"volume {volume.name} was not populated within "
                f"{self.settings.transfer_timeout:g} s: {why}"
            )

    @staticmethod
    def _copy(volume: VolumeState, result: dict[str, Any]) -> DiskCopy:
        done = msgspec.convert(result, type=fill.Done)
        return DiskCopy(
            disk_id=volume.disk_id,
            volume=volume.name,
            bytes_copied=done.bytes_copied,
            source=done.source,
            target=done.target,
            seconds=done.seconds,
        )
