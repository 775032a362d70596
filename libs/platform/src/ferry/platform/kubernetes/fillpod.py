"""A pod running Ferry's copy program (:mod:`ferry.platform.kubernetes.fill`) on one claim.

Two callers start such pods: the populator controller
(:mod:`~ferry.platform.kubernetes.populator`, on a prime claim) and the warm rounds
(:mod:`~ferry.platform.kubernetes.rounds`, on the VM's claim itself). What they share
lives here, once: the job in a Secret (a source's URL names a ticket, so never argv or
env), the pod (Ferry's image, read-only root filesystem, ``TMPDIR`` on an emptyDir, the
claim mounted or as a block device), which sources a pod can reach at all, and reading
the pod back: its reason when it failed (the termination message, or why its container
cannot start), its progress and its result (JSON lines in its log).
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import fill, grants
from ferry.platform.kubernetes.client import POD, KubeClient
from ferry.platform.volumes import ProgressCallback, TransferProgress, VolumeError, VolumeState
from ferry.proto.inventory import VolumeMode

JOB_DIR = "/etc/ferry/job"
STATE_DIR = "/var/lib/ferry-fill"  # an emptyDir: a retried pod starts afresh
# An emptyDir as TMPDIR: the root filesystem is read-only, and the copy makes
# qemu-nbd's socket directory and its pinned-link directory in the temp dir.
# Kept short: a Unix socket's path must fit in 108 bytes.
SCRATCH_DIR = "/var/lib/ferry-tmp"
TARGET_DEVICE = "/dev/ferry-target"
TARGET_DIR = "/mnt/ferry-target"
# The log lines read back from a pod. The program prints progress twice a second and
# its ledger at each checkpoint (every 10 s by default), so its last ledger is among
# the last few dozen lines; a failure's traceback fits too. (A longer checkpoint
# interval reads more: :func:`ledger_tail`.)
TAIL_LINES = 400


def ledger_tail(checkpoint_seconds: float) -> int:
    """Lines that hold the last ledger of a pod that prints progress twice a second."""
    return max(TAIL_LINES, int(4 * checkpoint_seconds) + 200)


# A container waiting for one of these will not start by itself: the pod has failed.
_STUCK = {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "RunContainerError",
}


def job_secret(name: str, namespace: str, labels: dict[str, str], job: fill.Job) -> dict[str, Any]:
    encoded = base64.b64encode(msgspec.json.encode(job)).decode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "data": {"job.json": encoded},
    }


def job(
    volume: VolumeState, source: ImageRef, ticket: grants.Ticket | None = None, **delta: Any
) -> fill.Job:
    """The pod's job; ``ticket``: the copy's grants under its budgets (none: unpaced)."""
    block = volume.volume_mode == VolumeMode.BLOCK
    if ticket is not None:
        delta = {**delta, "pace_url": ticket.url, "pace_token": ticket.token}
    return fill.Job(
        source=source,
        target=TARGET_DEVICE if block else TARGET_DIR,
        block=block,
        format=volume.format,
        capacity=volume.capacity,
        state_dir=STATE_DIR,
        **delta,
    )


def pod(
    name: str,
    namespace: str,
    labels: dict[str, str],
    *,
    claim: str,
    block: bool,
    node: str,
    image: str,
    deadline: int,
) -> dict[str, Any]:
    """The pod: job Secret ``name`` mounted read-only, ``claim`` as its target."""
    container: dict[str, Any] = {
        "name": "populate",
        "image": image,
        "command": ["python3", "-m", "ferry.platform.kubernetes.fill", f"{JOB_DIR}/job.json"],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "job", "mountPath": JOB_DIR, "readOnly": True},
            {"name": "state", "mountPath": STATE_DIR},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
        ],
        "env": [{"name": "TMPDIR", "value": SCRATCH_DIR}],
        # Restricted, like Ferry's own pods; the claim's group ownership (fsGroup on
        # the pod) is what lets a non-root process write the volume.
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if block:
        container["volumeDevices"] = [{"name": "target", "devicePath": TARGET_DEVICE}]
    else:
        container["volumeMounts"].append({"name": "target", "mountPath": TARGET_DIR})
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": deadline,
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [
            {"name": "target", "persistentVolumeClaim": {"claimName": claim}},
            {"name": "job", "secret": {"secretName": name, "defaultMode": 0o400}},
            {"name": "state", "emptyDir": {}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }
    if node:  # upstream pins a populator pod to the node the scheduler chose for the target
        spec["nodeName"] = node
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def pod_source(source: ImageRef) -> ImageRef:
    """The source as a pod reads it, off the volume-service's host.

    A disk served over the network (an oVirt image transfer) is read from there; an
    NBD export on a Unix socket of the volume-service's is out of the pod's reach in
    any cluster, so it is refused before anything is made rather than left to fail
    in the pod (or to work only where pods share the host's files).
    """
    remote = source.for_remote_workload()
    if remote.nbd_socket or _unix_socket(remote.qemu_options):
        raise VolumeError(
            "a transfer pod cannot read this source: it is served on a Unix socket of "
            "the volume-service's host, which a pod does not reach"
        )
    return remote


def _unix_socket(node: Any) -> bool:
    if isinstance(node, dict):
        server = node.get("server")
        if node.get("driver") == "nbd" and isinstance(server, dict):
            return server.get("type") == "unix" or "path" in server
        return any(_unix_socket(v) for v in node.values())
    return False


def phase(obj: dict[str, Any] | None) -> str:
    return str(((obj or {}).get("status") or {}).get("phase") or "")


def reason(pod: dict[str, Any]) -> str:
    """Why a failed pod failed: the pod's own reason where the kubelet gave one (evicted,
    past its deadline), else its termination message's last line that is not one of the
    program's own lines (a killed pod's log tail ends in progress), else its exit."""
    status = pod.get("status") or {}
    if status.get("reason"):
        return f"{status['reason']}: {status.get('message') or 'no message'}"
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        said = [x for x in str(terminated.get("message") or "").splitlines() if x.strip()]
        words = [x for x in said if not _program_line(x)]
        if words:
            return words[-1].strip()
        if "exitCode" in terminated:
            return f"exit code {terminated['exitCode']} ({terminated.get('reason') or 'Error'})"
    return str(status.get("message") or "no reason")


def _program_line(text: str) -> bool:
    try:
        msgspec.json.decode(text, type=fill.Line)
    except msgspec.DecodeError:
        return False
    return True


def exit_code(pod: dict[str, Any]) -> int | None:
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if "exitCode" in terminated:
            return int(terminated["exitCode"])
    return None


def stuck(pod: dict[str, Any]) -> str:
    """Why the pod's container cannot start (image, config, crash loop); '' when it may."""
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in _STUCK:
            return f"{waiting['reason']}: {waiting.get('message') or 'no message'}"
    return ""


async def log(client: KubeClient, namespace: str, name: str, tail: int = TAIL_LINES) -> str:
    """The end of the pod's log (``tail`` lines): the program's last progress, ledger
    and result are there, and a long copy's whole log is never read again each poll."""
    response = await client.stream(
        POD.path(namespace, name, "log"),
        f"logs of pod {namespace}/{name}",
        [("tailLines", str(tail))],
        accept="*/*",
    )
    try:
        return str((await response.read()).decode(errors="replace"))
    finally:
        response.release()


async def lines(
    client: KubeClient, namespace: str, name: str, tail: int = TAIL_LINES
) -> list[fill.Line]:
    found = []
    for text in (await log(client, namespace, name, tail)).splitlines():
        try:
            found.append(msgspec.json.decode(text, type=fill.Line))
        except msgspec.DecodeError:
            continue  # anything else the program printed
    return found


async def done(client: KubeClient, namespace: str, name: str) -> fill.Done:
    for line in reversed(await lines(client, namespace, name)):
        if isinstance(line, fill.Done):
            return line
    raise VolumeError(f"pod {name} succeeded without reporting its checksums")


async def report(
    client: KubeClient,
    volume: VolumeState,
    name: str,
    started: float,
    progress: ProgressCallback,
) -> None:
    """The pod's last progress line as the volume's progress (while it runs)."""
    if phase(await client.get(POD, volume.namespace, name)) != "Running":
        return
    last = [x for x in await lines(client, volume.namespace, name) if isinstance(x, fill.Progress)]
    if last:
        elapsed = max(time.monotonic() - started, 1e-6)
        share = int(volume.capacity * last[-1].done / max(last[-1].total, 1))
        progress(
            TransferProgress(
                disk_id=volume.disk_id,
                volume=volume.name,
                done=share,
                total=volume.capacity,
                rate=share / elapsed,
            )
        )
