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

It runs as the Ferry image's non-root user (10001) with that user and group set
explicitly: container runtimes with ``device_ownership_from_security_context`` then
give the pod's block devices to it (an fsGroup does not reach devices), and its
emptyDir and mounts to the group. Unlike the services' pods its root filesystem is not
read-only: libguestfs builds and caches its appliance under ``/var/tmp`` of the image.
"""

from __future__ import annotations

import base64
import hashlib
import math
import posixpath
import re
import shlex
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ferry.platform.workloads import Workload
from ferry.proto import label
from ferry.proto.inventory import VolumeMode

CONTAINER = "workload"
WORKLOAD_USER = 10001  # the Ferry image's user (Dockerfile: useradd --uid 10001 ferry)
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
# The exit status of a workload whose command succeeded but replaced one of its links;
# the termination message then starts with LINK_MESSAGE and says which.
LINKS_REPLACED = 97
LINK_MESSAGE = "ferry: "
_TERMINATION = "/dev/termination-log"

OUTPUT_DIR = "/var/run/ferry-output"  # an emptyDir: a workload's standard output file

# Links first; then the command as a child (SIGTERM passed on, so a deleted pod stops it
# within its grace period), its status kept; after a zero exit every link is checked,
# and a workload whose result is its standard output prints that file after a marker
# line (the pod's log is the only way out of a finished pod).
_WRAPPER = """set -e
{make}
set +e
"$@" {redirect}&
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM INT
wait "$child"; status=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; status=$?; done
[ "$status" -eq 0 ] || exit "$status"
{check}
{show}
exit 0
"""


def disk_placement(index: int, mode: VolumeMode) -> tuple[str, str]:
    """Where a pod sees its ``index``-th claim: (mount point or device, the disk).

    Forklift's conversion pod layout: a Block claim is the device ``/dev/block<i>``; a
    Filesystem claim is mounted at ``/mnt/disks/disk<i>`` with CDI's ``disk.img`` in it.
    """
    if mode == VolumeMode.BLOCK:
        return f"/dev/block{index}", f"/dev/block{index}"
    return f"/mnt/disks/disk{index}", f"/mnt/disks/disk{index}/disk.img"


def _command(workload: Workload, marker: str) -> list[str]:
    if not workload.links and not workload.output:
        return list(workload.argv)
    make, check = [], []
    for path, target in sorted(workload.links.items()):
        folder = posixpath.dirname(path)
        if folder:
            make.append(f"mkdir -p {shlex.quote(folder)}")
        make.append(f"ln -s {shlex.quote(target)} {shlex.quote(path)}")
        message = shlex.quote(f"{LINK_MESSAGE}{path} (→ {target}) was replaced by a file")
        check.append(
            f"test -L {shlex.quote(path)} || {{ printf '%s\\n' {message} | tee {_TERMINATION} >&2;"
            f" exit {LINKS_REPLACED}; }}"
        )
    redirect = show = ""
    if workload.output:
        redirect = f"> {OUTPUT_DIR}/stdout "
        show = f"printf '\\n%s\\n' {shlex.quote(marker)}; cat {OUTPUT_DIR}/stdout"
    script = _WRAPPER.format(
        make="\n".join(make) or ":", check="\n".join(check), redirect=redirect, show=show
    )
    return ["/bin/sh", "-c", script, "ferry-workload", *workload.argv]


def nfs_source(url: str) -> dict[str, str]:
    """``nfs://server/export/path`` as a pod's ``nfs`` volume source (server, path)."""
    parts = urlsplit(url)
    if parts.scheme != "nfs" or not parts.hostname or not parts.path.startswith("/"):
        raise ValueError(f"{url!r} is not an NFS share (nfs://server/export/path)")
    return {"server": parts.hostname, "path": parts.path}


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
    marker: str = "",
) -> dict[str, Any]:
    """The pod for ``workload``; ``modes`` gives each claim's volume mode; ``marker`` is
    the line after which the log holds the workload's output file (when it has one)."""
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
    if workload.output:
        volumes.append({"name": "output", "emptyDir": {}})
        mounts.append({"name": "output", "mountPath": OUTPUT_DIR})
    if workload.secret_files:
        volumes.append({"name": "secrets", "secret": {"secretName": name, "defaultMode": 0o400}})
        mounts.append({"name": "secrets", "mountPath": workload.secret_dir, "readOnly": True})
    for index, (path, url) in enumerate(sorted(workload.shares.items())):
        volumes.append({"name": f"share-{index}", "nfs": {**nfs_source(url), "readOnly": True}})
        mounts.append({"name": f"share-{index}", "mountPath": path, "readOnly": True})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": _command(workload, marker),
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
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": WORKLOAD_USER,
                "runAsGroup": WORKLOAD_USER,
                "fsGroup": WORKLOAD_USER,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": volumes,
        },
    }
