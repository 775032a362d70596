"""The pod (and its Secret) a workload becomes in a cluster: pure data in, data out.

A workload pod runs one container of the conversion image with the workload's
argv as its command, its (non-secret) env, its work directory on an ``emptyDir``
and each of its claims where the workload expects it: a Block claim as a device
(``volumeDevices``), a Filesystem claim as a directory (``volumeMounts``). Its
secret files are a Secret of their own, mounted read-only at ``secret_dir`` with
mode 0400; nothing secret is in the pod's spec, so reading the pod (or its
events) never shows a password. ``restartPolicy: Never`` and
``activeDeadlineSeconds`` make its end final and bounded; the termination message
falls back to the log's tail, so a crash carries its last words.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from ferry.platform.workloads import Workload
from ferry.proto import label
from ferry.proto.inventory import VolumeMode

CONTAINER = "workload"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def pod_name(workload: Workload) -> str:
    """The same name for the same workload of the same VM, so a retry finds its pod."""
    owner = "\0".join(f"{k}={v}" for k, v in sorted(workload.labels.items()))
    tag = hashlib.sha256(f"{workload.name}\0{owner}".encode()).hexdigest()[:10]
    slug = _NOT_DNS.sub("-", workload.name.lower()).strip("-")[:40].strip("-")
    return f"{slug or 'workload'}-{tag}"


def _labels(workload: Workload) -> dict[str, str]:
    return {**workload.labels, label.TEMPORARY: "true"}


def secret(workload: Workload, namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(workload)},
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in workload.secret_files.items()},
    }


def workload_pod(
    workload: Workload,
    namespace: str,
    image: str,
    modes: Mapping[str, VolumeMode],
) -> dict[str, Any]:
    """The pod for ``workload``; ``modes`` gives each claim's volume mode."""
    name = pod_name(workload)
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    for index, (claim, path) in enumerate(sorted(workload.volumes.items())):
        volume = f"disk-{index}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        if modes[claim] == VolumeMode.BLOCK:
            devices.append({"name": volume, "devicePath": path})
        else:
            mounts.append({"name": volume, "mountPath": path})
    if workload.workdir:
        volumes.append({"name": "work", "emptyDir": {}})
        mounts.append({"name": "work", "mountPath": workload.workdir})
    if workload.secret_files:
        volumes.append({"name": "secrets", "secret": {"secretName": name, "defaultMode": 0o400}})
        mounts.append({"name": "secrets", "mountPath": workload.secret_dir, "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": list(workload.argv),
        "env": [{"name": k, "value": v} for k, v in sorted(workload.env.items())],
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if workload.workdir:
        container["workingDir"] = workload.workdir
    if mounts:
        container["volumeMounts"] = mounts
    if devices:
        container["volumeDevices"] = devices
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": _labels(workload)},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": max(1, math.ceil(workload.time_limit)),
            "terminationGracePeriodSeconds": max(0, math.ceil(workload.grace)),
            "automountServiceAccountToken": False,
            "containers": [container],
            "volumes": volumes,
        },
    }
