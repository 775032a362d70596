"""Flow 1 on Kubernetes: each copy round of a VM's claim is one Ferry transfer pod.

A warm migration's volumes (flow 1: warm, or a cold importer copy) are plain PVCs
labelled like every Ferry volume (:func:`ferry.platform.kubernetes.objects.transfer_claim`),
not CDI DataVolumes, and Ferry's own pod writes them: round 0 copies the whole disk
(:meth:`Rounds.full`), every later round writes only that round's changed extents over
the filled claim, the last one also comparing the whole disks (:meth:`Rounds.delta`).
The program is the populator pod's (:mod:`ferry.platform.kubernetes.fill`), i.e. the
local importer's copy engine and its delta round, with the same checksums.

Why not CDI's multi-stage import (a DataVolume with ``checkpoints``): CDI's imageio
multi-stage source reads oVirt *snapshots* (each checkpoint a snapshot id, the delta
between two of them computed by CDI's importer), while Ferry's warm oVirt reads the
engine's *incremental backups* (a dirty bitmap per round, served by imageio as the
backup transfer's extents), and Ferry's other warm sources (libvirt, vSphere CBT) have
no CDI source at all. One transfer program applying the deltas the local importer
applies keeps one round, one verification and one set of tests for every platform;
a DataVolume would also bring CDI's importer pod onto the same claim.

What a round guarantees here:

* the source must be readable from a pod (an image transfer URL over HTTPS, or a
  remote libvirt host's backup job over TCP with TLS); a disk on the volume-service's
  host (a Unix socket, a file) is refused before anything is made;
* the job (URL with its ticket, or the TLS export with the client's key; CA, extents,
  the grant ticket of a paced copy) is only in the pod's Secret;
* one pod per claim, under one name: a round killed and run again removes what the
  killed attempt left (pod and Secret) before it starts its own, so never two pods;
* a delta round's pod prints its durable ledger (:class:`fill.Checkpoint`); the pod
  started next for the round (after a pod failed, or after the volume-service was
  killed and the round redelivered) gets the last one read from its predecessor's log
  and writes only the rest (the ledger names its round: another round's is ignored);
* the pod and its Secret are deleted after every round, whatever its outcome; a pod
  that failed in a way another may not (I/O, a kill) is started again (:data:`ATTEMPTS`
  in all, as the populator's: the round rewrites the same ranges of the same picture);
  its termination message is the round's reason, at once when the program says another
  pod would fail the same way (a refused ticket, a differing target) or the container
  cannot start (crash loop, image);
* round 0's verified result is written on the claim (:data:`objects.ANNOTATION_COPY`):
  only then is the claim a full copy (``Succeeded``), on which a delta may be applied.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import msgspec

from ferry.platform.copy.delta import State as Ledger
from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, fillpod, grants, objects
from ferry.platform.kubernetes.client import POD, PVC, SECRET, KubeClient
from ferry.platform.settings import KubernetesSettings
from ferry.platform.volumes import ProgressCallback, VolumeError, VolumeState
from ferry.proto import label
from ferry.proto.inventory import DiskCopy, VolumeMode

GONE_SECONDS = 60.0  # how long a deleted pod may take to go (its grace period)
ATTEMPTS = 3  # pods started for one round before it fails (as the populator's)
log = logging.getLogger(__name__)


class TransferFailed(VolumeError):
    """The round's pod failed (or could not start); the message says why. The round
    runs again from a new view on redelivery."""

    permanent = False


class PodFailed(TransferFailed):
    """The pod failed in a way another pod may not (its termination message says why)."""


def pod_name(claim: dict[str, Any]) -> str:
    return f"transfer-{claim['metadata']['uid']}"


def round_source(source: ImageRef) -> ImageRef:
    """What the pod reads; only a disk served over the network reaches a pod."""
    remote = fillpod.pod_source(source)
    if not remote.url and remote.nbd_tls is None and remote.http_range is None:
        where = remote.path or "a source of the volume-service's host"
        raise VolumeError(
            f"a transfer pod cannot read {where}: on Kubernetes a copy round reads only a "
            "disk served over the network (an oVirt image transfer, a remote libvirt "
            "host's backup job over TLS, a vSphere datastore's HTTPS path), not a file or "
            "socket of the volume-service's host"
        )
    return remote


def copy_of(claim: dict[str, Any]) -> fill.Done | None:
    """Round 0's result as written on the claim, if it was."""
    text = ((claim.get("metadata") or {}).get("annotations") or {}).get(objects.ANNOTATION_COPY)
    if not text:
        return None
    try:
        return msgspec.json.decode(text, type=fill.Done)
    except msgspec.DecodeError:
        return None


def to_copy(volume: VolumeState, done: fill.Done) -> DiskCopy:
    return DiskCopy(
        disk_id=volume.disk_id,
        volume=volume.name,
        bytes_copied=done.bytes_copied,
        source=done.source,
        target=done.target,
        seconds=done.seconds,
    )


class Rounds:
    def __init__(self, client: KubeClient, settings: KubernetesSettings) -> None:
        self.client = client
        self.settings = settings

    async def full(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None,
        *,
        ticket: grants.Ticket | None = None,
    ) -> DiskCopy:
        """Round 0 (or a cold importer copy): the whole disk; a claim that holds one
        already returns it without a pod (a redelivered command). ``ticket``: the
        pod asks it for each chunk's grant (a bandwidth budget applies)."""
        reachable = round_source(source)
        claim = await self._claim(volume)
        done = copy_of(claim)
        if done is not None:
            return to_copy(volume, done)
        done = await self._run(
            volume, claim, fillpod.job(volume, reachable, ticket, fresh=True), progress
        )
        await self._annotate(volume, done)
        return to_copy(volume, done)

    async def delta(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None,
        *,
        last: bool,
        ticket: grants.Ticket | None = None,
    ) -> DiskCopy:
        """A later round: ``source.extents`` written over the full copy."""
        reachable = round_source(source)
        claim = await self._claim(volume)
        if copy_of(claim) is None:
            raise VolumeError(f"volume {volume.name} holds no full copy yet: no delta applies")
        job = fillpod.job(
            volume,
            reachable,
            ticket,
            delta=True,
            last=last,
            extents=list(source.extents or []),
            key=source.snapshot,
            checkpoint_seconds=self.settings.checkpoint_seconds,
        )
        return to_copy(volume, await self._run(volume, claim, job, progress))

    # -- the pod -----------------------------------------------------------------------

    async def _run(
        self,
        volume: VolumeState,
        claim: dict[str, Any],
        job: fill.Job,
        progress: ProgressCallback | None,
    ) -> fill.Done:
        image = self.settings.populator_image
        if not image:
            raise VolumeError("kubernetes platform: populator_image is not set")
        namespace, name = volume.namespace, pod_name(claim)
        labels = {**(claim["metadata"].get("labels") or {}), label.TEMPORARY: "true"}
        pod = fillpod.pod(
            name,
            namespace,
            labels,
            claim=volume.name,
            block=volume.volume_mode == VolumeMode.BLOCK,
            node="",  # the scheduler places it where the claim's storage is
            image=image,
            deadline=max(1, int(self.settings.transfer_timeout)),
        )
        objects.validate_object(pod)
        try:
            for attempt in range(1, ATTEMPTS + 1):
                if job.delta:  # the pod before (killed attempt's or failed) may have begun
                    left = await self._ledger(namespace, name)
                    job = msgspec.structs.replace(job, resume=left or job.resume)
                secret = fillpod.job_secret(name, namespace, labels, job)
                objects.validate_object(secret)
                # what a killed attempt (or the failed pod before) left: never two pods
                await self._remove(namespace, name)
                await self.client.create(SECRET, secret)
                await self.client.create(POD, pod)
                try:
                    return await self._wait(volume, name, progress)
                except PodFailed as failed:
                    if attempt == ATTEMPTS:
                        raise PodFailed(f"{failed.reason} ({ATTEMPTS} attempts)") from None
                    log.warning("%s; starting it again", failed.reason)
            raise AssertionError("unreachable")
        finally:
            await asyncio.shield(self._remove(namespace, name))

    async def _wait(
        self, volume: VolumeState, name: str, progress: ProgressCallback | None
    ) -> fill.Done:
        started = time.monotonic()
        while True:
            pod = await self.client.get(POD, volume.namespace, name)
            if pod is None:
                raise TransferFailed(f"the transfer pod of {volume.name} was deleted")
            phase = fillpod.phase(pod)
            if phase == "Succeeded":
                return await fillpod.done(self.client, volume.namespace, name)
            if phase == "Failed":
                again = fillpod.exit_code(pod) != fill.PERMANENT  # a deadline, a kill, I/O
                raise (PodFailed if again else TransferFailed)(
                    f"the transfer pod of {volume.name} failed: {fillpod.reason(pod)}"
                )
            stuck = fillpod.stuck(pod)
            if stuck:
                raise TransferFailed(f"the transfer pod of {volume.name} cannot run: {stuck}")
            if time.monotonic() - started >= self.settings.transfer_timeout:
                raise TransferFailed(
                    f"volume {volume.name} was not written within "
                    f"{self.settings.transfer_timeout:g} s: the transfer pod is "
                    f"{phase or 'not started'}"
                )
            await asyncio.sleep(self.settings.poll_seconds)
            if progress is not None:
                await fillpod.report(self.client, volume, name, started, progress)

    async def _ledger(self, namespace: str, name: str) -> Ledger | None:
        """The last durable ledger the pod of this name printed, if it printed one."""
        if await self.client.get(POD, namespace, name) is None:
            return None
        try:
            tail = fillpod.ledger_tail(self.settings.checkpoint_seconds)
            found = await fillpod.lines(self.client, namespace, name, tail)
        except VolumeError as error:  # no log (yet): the next pod starts the round afresh
            log.info("pod %s/%s: no log to resume from (%s)", namespace, name, error.reason)
            return None
        ledgers = [line.state for line in found if isinstance(line, fill.Checkpoint)]
        return ledgers[-1] if ledgers else None

    async def _remove(self, namespace: str, name: str) -> None:
        """Delete the pod and its Secret, and wait until the pod is gone."""
        await self.client.delete(POD, namespace, name, grace_seconds=0)
        await self.client.delete(SECRET, namespace, name)
        deadline = time.monotonic() + GONE_SECONDS
        while await self.client.get(POD, namespace, name) is not None:
            if time.monotonic() > deadline:
                raise TransferFailed(f"pod {namespace}/{name} was not gone in {GONE_SECONDS:g} s")
            await asyncio.sleep(self.settings.poll_seconds)

    # -- the claim ---------------------------------------------------------------------

    async def _claim(self, volume: VolumeState) -> dict[str, Any]:
        claim = await self.client.get(PVC, volume.namespace, volume.name)
        if claim is None:
            raise VolumeError(f"no claim {volume.namespace}/{volume.name}")
        return claim

    async def _annotate(self, volume: VolumeState, done: fill.Done) -> None:
        value = msgspec.json.encode(done).decode()
        patch = {"metadata": {"annotations": {objects.ANNOTATION_COPY: value}}}
        await self.client.patch(PVC, volume.namespace, volume.name, patch)
