"""Workloads as pods: :class:`~ferry.platform.workloads.WorkloadPlatform` on a cluster.

A workload becomes one pod (:mod:`ferry.platform.kubernetes.pods`) in the
namespace of its claims. Its output is the pod's log, followed as it is written
and handed on line by line, exactly as a local child's output is; its exit status
is the container's exit code. What only a cluster can do to a pod is told apart
from what the command did: an eviction (or any end the kubelet imposed, without
an exit code of the command's own) is :class:`~ferry.platform.workloads.WorkloadLost`
with the kubelet's reason; ``activeDeadlineSeconds`` running out is
:class:`~ferry.platform.workloads.WorkloadTimedOut`; a pod that cannot start (an
image that does not pull, a claim that does not bind) fails when the time limit
ends, with the reason it is waiting.

A finished pod is deleted; a failed one is kept (labelled temporary, so clean-up
removes it) so that ``kubectl logs`` still shows what happened. Cancelling the
awaiting task deletes the pod with its grace period and waits until it is gone.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import time
import uuid
from collections.abc import Sequence
from typing import Any, BinaryIO

from ferry.platform.kubernetes import objects, pods
from ferry.platform.kubernetes.client import (
    POD,
    PVC,
    SECRET,
    ClusterError,
    KubeClient,
)
from ferry.platform.settings import KubernetesSettings
from ferry.platform.workloads import (
    LineHandler,
    Placed,
    Workload,
    WorkloadError,
    WorkloadLost,
    WorkloadTimedOut,
    split_lines,
)
from ferry.proto.inventory import Volume, VolumeMode

_GONE_SECONDS = 60.0  # after a delete, how long a pod may take to go before we stop waiting


def _status(pod: dict[str, Any]) -> dict[str, Any]:
    return pod.get("status") or {}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = _status(pod).get("containerStatuses") or [{}]
    return dict(statuses[0])


def _waiting_reason(pod: dict[str, Any]) -> str:
    waiting = (_container(pod).get("state") or {}).get("waiting") or {}
    if waiting:
        return f"{waiting.get('reason', '')}: {waiting.get('message', '')}".strip(": ")
    for condition in _status(pod).get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            return str(condition["message"])
    return "not started"


class _Output:
    """A pod's log as it comes: up to the marker line, the workload's log (and its
    lines); after it, the bytes of the workload's output file."""

    def __init__(self, log: BinaryIO, marker: str) -> None:
        self.log = log
        self.marker = f"\n{marker}\n".encode() if marker else b""
        self.held = b""  # a tail that may be the start of the marker
        self.output = b""
        self.after = False

    def _write(self, data: bytes) -> bytes:
        if data:
            self.log.write(data)
            self.log.flush()
        return data

    def feed(self, chunk: bytes) -> bytes:
        """What of ``chunk`` is log (written to the log already)."""
        if self.after:
            self.output += chunk
            return b""
        if not self.marker:
            return self._write(chunk)
        data = self.held + chunk
        at = data.find(self.marker)
        if at >= 0:
            self.after, self.held = True, b""
            self.output = data[at + len(self.marker) :]
            return self._write(data[:at])  # the newline before the marker is its own
        keep = len(self.marker) - 1
        data, self.held = data[: max(0, len(data) - keep)], data[max(0, len(data) - keep) :]
        return self._write(data)

    def finish(self) -> bytes:
        """The log ended: a held tail was log after all."""
        rest, self.held = self.held, b""
        return self._write(rest)


class KubeWorkloads:
    workloads_run_here = False

    def __init__(self, client: KubeClient, settings: KubernetesSettings) -> None:
        self.client = client
        self.settings = settings

    async def place_volumes(self, namespace: str, volumes: Sequence[Volume]) -> dict[str, Placed]:
        """Each claim at Forklift's conversion-pod paths (:func:`pods.disk_placement`)."""
        modes = await self._modes(namespace, [volume.name for volume in volumes])
        placed = {}
        for index, volume in enumerate(volumes):
            mount, disk = pods.disk_placement(index, modes[volume.name])
            block = modes[volume.name] == VolumeMode.BLOCK
            placed[volume.name] = Placed(mount=mount, disk=disk, block=block)
        return placed

    async def run_workload(
        self, workload: Workload, log: BinaryIO, on_line: LineHandler | None = None
    ) -> int:
        if not self.settings.conversion_image:
            raise WorkloadError("kubernetes platform: conversion_image is not set; cannot run pods")
        if not workload.namespace:
            raise WorkloadError(f"workload {workload.name}: no namespace for its pod")
        namespace = workload.namespace
        modes = await self._modes(namespace, list(workload.volumes))
        marker = f"ferry-output-{uuid.uuid4().hex}" if workload.output else ""
        image = self.settings.conversion_image
        pod = pods.workload_pod(workload, namespace, image, modes, marker)
        name = pod["metadata"]["name"]
        made = [pod]
        if workload.secret_files:
            made.append(pods.secret(workload, namespace, name))
        for obj in made:
            objects.validate_object(obj)
        await self._clear(namespace, name)
        for obj in reversed(made):  # the Secret first: the pod mounts it
            await self.client.create(POD if obj["kind"] == "Pod" else SECRET, obj)
        succeeded = False
        kept = _Output(log, marker)
        try:
            async with asyncio.timeout(workload.time_limit):
                status = await self._follow(namespace, name, kept, on_line)
            succeeded = status == 0
            if workload.output:
                with open(workload.output, "wb") as output:  # noqa: ASYNC230 - small, local
                    output.write(kept.output)
            return status
        except TimeoutError:
            raise WorkloadTimedOut(workload.time_limit) from None
        finally:
            if succeeded or asyncio.current_task().cancelling():  # type: ignore[union-attr]
                await self._remove(namespace, name, workload.grace)
            else:
                await self._stop(namespace, name, workload.grace)
            if workload.secret_files:  # the secret never outlives the run
                with contextlib.suppress(ClusterError):
                    await self.client.delete(SECRET, namespace, name)

    async def _modes(self, namespace: str, claims: list[str]) -> dict[str, VolumeMode]:
        modes = {}
        for claim in claims:
            found = await self.client.get(PVC, namespace, claim)
            if found is None:
                raise WorkloadError(f"claim {namespace}/{claim} does not exist")
            modes[claim] = VolumeMode((found.get("spec") or {}).get("volumeMode") or "Filesystem")
        return modes

    async def _follow(
        self, namespace: str, name: str, log: _Output, on_line: LineHandler | None
    ) -> int:
        while True:
            pod = await self.client.get(POD, namespace, name)
            if pod is None:
                raise WorkloadLost(f"pod {namespace}/{name} was deleted while it ran")
            if _status(pod).get("phase") in ("Running", "Succeeded", "Failed"):
                break
            await asyncio.sleep(self.settings.poll_seconds)
        await self._stream(namespace, name, log, on_line)
        while True:  # the log ended: the container did, or the stream broke
            pod = await self.client.get(POD, namespace, name)
            if pod is None:
                raise WorkloadLost(f"pod {namespace}/{name} was deleted while it ran")
            phase = _status(pod).get("phase")
            if phase in ("Succeeded", "Failed"):
                return self._exit(pod)
            await asyncio.sleep(self.settings.poll_seconds)

    def _exit(self, pod: dict[str, Any]) -> int:
        status = _status(pod)
        reason = str(status.get("reason") or "")
        if reason == "DeadlineExceeded":
            deadline = float(pod["spec"].get("activeDeadlineSeconds") or 0)
            raise WorkloadTimedOut(deadline)
        terminated = (_container(pod).get("state") or {}).get("terminated")
        if reason or terminated is None:
            why = status.get("message") or reason or "no exit code"
            raise WorkloadLost(
                f"pod {pod['metadata']['name']} ended by the cluster: {reason}: {why}"
            )
        code = int(terminated.get("exitCode", 1))
        message = str(terminated.get("message") or "")
        if code == pods.LINKS_REPLACED and message.startswith(pods.LINK_MESSAGE):
            raise WorkloadError(
                f"pod {pod['metadata']['name']}: {message.removeprefix(pods.LINK_MESSAGE)}".strip()
            )
        return code

    async def _stream(
        self, namespace: str, name: str, log: _Output, on_line: LineHandler | None
    ) -> None:
        response = await self.client.stream(
            POD.path(namespace, name, "log"),
            f"logs of pod {namespace}/{name}",
            [("follow", "true"), ("container", pods.CONTAINER)],
            accept="*/*",
        )
        pending = ""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            async for chunk in response.content.iter_any():
                text = decoder.decode(log.feed(chunk))
                lines, pending = split_lines(pending + text)
                if on_line is not None:
                    for line in lines:
                        await on_line(line)
        finally:
            response.release()
        pending += decoder.decode(log.finish(), final=True)
        if on_line is not None:
            lines, pending = split_lines(pending)
            for line in [*lines, pending] if pending else lines:
                await on_line(line)

    async def _clear(self, namespace: str, name: str) -> None:
        """A pod of the same name from an earlier attempt goes first (a retry starts afresh)."""
        if await self.client.get(POD, namespace, name) is not None:
            await self._remove(namespace, name, 0)
        await self.client.delete(SECRET, namespace, name)

    async def _stop(self, namespace: str, name: str, grace: float) -> None:
        """Failed: the pod has ended and stays for its logs; make sure nothing of it runs."""
        pod = await self.client.get(POD, namespace, name)
        if pod is not None and _status(pod).get("phase") not in ("Succeeded", "Failed"):
            await self._remove(namespace, name, grace)

    async def _remove(self, namespace: str, name: str, grace: float) -> None:
        async def remove() -> None:
            await self.client.delete(POD, namespace, name, grace_seconds=int(grace))
            limit = time.monotonic() + grace + _GONE_SECONDS
            while await self.client.get(POD, namespace, name) is not None:
                if time.monotonic() > limit:
                    return
                await asyncio.sleep(self.settings.poll_seconds)

        removing = asyncio.ensure_future(remove())
        try:
            await asyncio.shield(removing)
        except asyncio.CancelledError:
            await removing  # the pod goes before the cancellation does
            raise
