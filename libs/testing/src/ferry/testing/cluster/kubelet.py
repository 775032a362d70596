"""A kubelet that really runs a pod's container, as a local process tree.

A pod bound to a node (by the scheduler in :mod:`.binder`) is started when its
image is one the node can run (:attr:`Kubelet.images`; any other stays
``Pending`` in ``ErrImagePull``). Its command and args run in a private mount
namespace (:mod:`.container`) where each volume is at the path the spec names:
a claim's directory (``volumeMounts``) or block file (``volumeDevices``), a
Secret's keys as files, an ``emptyDir``, an ``nfs`` export (a local directory standing
for the share: no NFS server runs here), and the termination-message file. Its
environment is the spec's ``env`` (``secretKeyRef`` resolved) over the image's
own, nothing of the kubelet's.

What a cluster would refuse fails here too: a mount of a volume the pod does not
declare, a Block claim in ``volumeMounts`` or a Filesystem one in
``volumeDevices``, a missing Secret (the pod waits in ``ContainerCreating``). The
pod's end is reported as the kubelet reports it: phase, ``exitCode``, ``reason``
(``Completed``, ``Error``, ``DeadlineExceeded``, ``Evicted``) and the termination
message (the file, or the log's tail under ``FallbackToLogsOnError``). Deleting a
running pod sends SIGTERM, waits its grace period, then kills all of it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry.testing.cluster.resources import POD, PV, PVC, SECRET
from ferry.testing.cluster.store import Obj, Store, meta, now

_TAIL_BYTES = 2048


class SpecError(Exception):
    """The pod cannot run as written (the message is what the kubelet would say)."""


@dataclass
class _Running:
    key: tuple[str, str]  # the pod's namespace and name (its uid keys the kubelet's table)
    task: asyncio.Task[None]
    log: Path
    termination: Path
    process: asyncio.subprocess.Process | None = None
    stopping: str = ""  # why it is being stopped (a reason the pod's status takes)
    message: str = ""


@dataclass
class Kubelet:
    store: Store
    root: Path
    images: dict[str, dict[str, str]] = field(default_factory=dict)  # image → its ENV
    # NFS exports this node can mount, "server:/path" → a local directory. There is no
    # NFS server here: an ``nfs`` volume is that directory, always mounted read-only
    # when the pod asks for readOnly (and an export not listed leaves the pod waiting,
    # as a mount that times out would).
    exports: dict[str, Path] = field(default_factory=dict)
    # Pods whose process has not ended, by uid: a pod force-deleted and made again under
    # its name is another pod, as on a node (its old process may still be ending).
    _running: dict[str, _Running] = field(default_factory=dict)
    _ended: set[str] = field(default_factory=set)  # uids of pods that ran

    def __post_init__(self) -> None:
        self.store.graceful[POD.key] = lambda pod: meta(pod)["uid"] in self._running

    @staticmethod
    def _key(pod: Obj) -> tuple[str, str]:
        return meta(pod)["namespace"], meta(pod)["name"]

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.root / "pods" / namespace / name

    def running(self) -> list[tuple[str, str]]:
        """(namespace, name) of every pod whose process has not ended."""
        return sorted(running.key for running in self._running.values())

    async def logs(self, namespace: str, name: str) -> tuple[bytes, bool]:
        path = self.pod_dir(namespace, name) / "log"
        data = path.read_bytes() if path.exists() else b""
        return data, (namespace, name) not in self.running()

    # -- the sync loop ---------------------------------------------------------------

    def reconcile(self) -> None:
        present = set()
        for pod in self.store.list(POD):
            uid = meta(pod)["uid"]
            present.add(uid)
            running = self._running.get(uid)
            if running is not None:
                if meta(pod).get("deletionTimestamp") and not running.stopping:
                    grace = meta(pod).get("deletionGracePeriodSeconds")
                    if grace is None:
                        grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                    self._stop(running, "Deleted", float(grace))
                continue
            if not (pod.get("spec") or {}).get("nodeName") or uid in self._ended:
                continue
            if self._key(pod) in self.running():
                continue  # an earlier pod of this name still ending: its directory is in use
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            self._start(pod)
        for uid, running in list(self._running.items()):
            if uid not in present and not running.stopping:  # force-deleted
                self._stop(running, "Deleted", 0)

    def _start(self, pod: Obj) -> None:
        try:
            spec = self._container_spec(pod)
        except SpecError as error:
            self._waiting(pod, "CreateContainerConfigError", str(error))
            return
        except _Waiting as waiting:
            self._waiting(pod, waiting.reason, waiting.message)
            return
        key = self._key(pod)
        directory = self.pod_dir(*key)
        spec_file = directory / "container.json"
        spec_file.write_text(json.dumps(spec))
        log = directory / "log"
        uid = meta(pod)["uid"]
        self._ended.add(uid)
        task = asyncio.get_running_loop().create_task(self._run(pod, spec_file, log))
        self._running[uid] = _Running(key, task, log, Path(spec["termination"]))

    def _waiting(self, pod: Obj, reason: str, message: str) -> None:
        status = pod.setdefault("status", {})
        wanted = [
            {
                "name": pod["spec"]["containers"][0]["name"],
                "ready": False,
                "restartCount": 0,
                "image": pod["spec"]["containers"][0].get("image", ""),
                "imageID": "",
                "state": {"waiting": {"reason": reason, "message": message}},
            }
        ]
        if status.get("containerStatuses") != wanted:
            status.update(phase="Pending", containerStatuses=wanted)
            self.store.replace(POD, pod)

    # -- building what the container sees --------------------------------------------

    def _container_spec(self, pod: Obj) -> dict[str, Any]:
        spec = pod["spec"]
        containers = spec.get("containers") or []
        if len(containers) != 1 or spec.get("initContainers"):
            raise SpecError("the stand-in kubelet runs pods of exactly one container")
        container = containers[0]
        image = container.get("image", "")
        if image not in self.images:
            raise _Waiting("ErrImagePull", f'failed to pull image "{image}": not found')
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        if not argv:
            raise SpecError(f'image "{image}" has no entrypoint here: give a command')
        namespace = meta(pod)["namespace"]
        directory = self.pod_dir(namespace, meta(pod)["name"])
        directory.mkdir(parents=True, exist_ok=True)
        read_only: set[str] = set()
        sources = self._volumes(pod, directory, read_only)
        mounts: list[dict[str, Any]] = []
        for mount in container.get("volumeMounts") or []:
            source, block = sources.get(mount["name"], (None, False))
            if source is None:
                raise SpecError(f"volumeMounts: volume {mount['name']!r} is not declared")
            if block:
                raise SpecError(f"volume {mount['name']!r} has volumeMode Block: use volumeDevices")
            mounts.append(
                {
                    "source": str(source),
                    "target": mount["mountPath"],
                    "read_only": bool(mount.get("readOnly")) or mount["name"] in read_only,
                }
            )
        for device in container.get("volumeDevices") or []:
            source, block = sources.get(device["name"], (None, False))
            if source is None:
                raise SpecError(f"volumeDevices: volume {device['name']!r} is not declared")
            if not block:
                raise SpecError(
                    f"volume {device['name']!r} has volumeMode Filesystem: use volumeMounts"
                )
            mounts.append({"source": str(source), "target": device["devicePath"]})
        termination = directory / "termination-log"
        termination.write_bytes(b"")
        mounts.append(
            {
                "source": str(termination),
                "target": container.get("terminationMessagePath", "/dev/termination-log"),
            }
        )
        env = {**self.images[image], "HOSTNAME": meta(pod)["name"]}
        for item in container.get("env") or []:
            env[item["name"]] = self._env_value(namespace, item)
        scratch = directory / "scratch"
        scratch.mkdir(exist_ok=True)
        return {
            "argv": argv,
            "env": env,
            "mounts": mounts,
            "workdir": container.get("workingDir", ""),
            "scratch": str(scratch),
            "termination": str(termination),
            "policy": container.get("terminationMessagePolicy", "File"),
            "read_only_root": bool(
                (container.get("securityContext") or {}).get("readOnlyRootFilesystem")
            ),
        }

    def _env_value(self, namespace: str, item: Mapping[str, Any]) -> str:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if ref is None:
            return str(item.get("value", ""))
        secret = self.store.get(SECRET, namespace, ref["name"])
        if secret is None or ref["key"] not in (secret.get("data") or {}):
            raise _Waiting("CreateContainerConfigError", f'secret "{ref["name"]}" not found')
        return base64.b64decode(secret["data"][ref["key"]]).decode()

    def _volumes(
        self, pod: Obj, directory: Path, read_only: set[str]
    ) -> dict[str, tuple[Path, bool]]:
        namespace = meta(pod)["namespace"]
        found: dict[str, tuple[Path, bool]] = {}
        for volume in pod["spec"].get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                claim = self.store.get(PVC, namespace, volume["persistentVolumeClaim"]["claimName"])
                pv = self.store.get(PV, "", ((claim or {}).get("spec") or {}).get("volumeName", ""))
                if pv is None:
                    raise _Waiting("ContainerCreating", f"volume {name!r}: claim not bound")
                found[name] = (
                    Path(pv["spec"]["hostPath"]["path"]),
                    pv["spec"].get("volumeMode") == "Block",
                )
            elif "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                secret = self.store.get(SECRET, namespace, secret_name)
                if secret is None:
                    raise _Waiting(
                        "ContainerCreating",
                        f'MountVolume.SetUp failed for volume "{name}": '
                        f'secret "{secret_name}" not found',
                    )
                files = directory / meta(pod)["uid"] / name
                files.mkdir(parents=True, exist_ok=True)
                for key, value in (secret.get("data") or {}).items():
                    path = files / key
                    path.write_bytes(base64.b64decode(value))
                    path.chmod(volume["secret"].get("defaultMode", 0o644) & 0o777)
                found[name] = (files, False)
            elif "nfs" in volume:
                nfs = volume["nfs"]
                export = self.exports.get(f"{nfs['server']}:{nfs['path']}")
                if export is None:
                    raise _Waiting(
                        "ContainerCreating",
                        f'MountVolume.SetUp failed for volume "{name}": mount.nfs: '
                        f"{nfs['server']}:{nfs['path']}: no such export",
                    )
                found[name] = (export, False)
                if nfs.get("readOnly"):
                    read_only.add(name)
            elif "emptyDir" in volume:
                empty = directory / meta(pod)["uid"] / name  # empty for each new pod
                empty.mkdir(parents=True, exist_ok=True)
                found[name] = (empty, False)
            else:
                raise SpecError(
                    f"volume {name!r}: only claims, Secrets, nfs and emptyDir are served here"
                )
        return found

    # -- running and ending ----------------------------------------------------------

    async def _run(self, pod: Obj, spec_file: Path, log: Path) -> None:
        uid = meta(pod)["uid"]
        spec = json.loads(spec_file.read_text())  # noqa: ASYNC240 - a small local file
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--",
                sys.executable,
                "-m",
                "ferry.testing.cluster.container",
                str(spec_file),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={
                    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "PYTHONPATH": os.pathsep.join(sys.path),
                },
            )
        running = self._running[uid]
        running.process = process
        if running.stopping:  # deleted while it was starting
            self._signal(process, signal.SIGKILL)
        self._started(pod)
        deadline = pod["spec"].get("activeDeadlineSeconds") or 0
        try:
            if deadline:
                async with asyncio.timeout(deadline):
                    code = await process.wait()
            else:
                code = await process.wait()
        except TimeoutError:
            running.stopping = "DeadlineExceeded"
            self._signal(process, signal.SIGKILL)
            code = await process.wait()
        self._signal(process, signal.SIGKILL)  # helpers left in its session go with it
        self._finish(uid, running, code, spec)

    def _started(self, pod: Obj) -> None:
        fresh = self.store.get(POD, *self._key(pod))
        if fresh is None or meta(fresh)["uid"] != meta(pod)["uid"]:
            return  # gone, or another pod of this name now
        container = fresh["spec"]["containers"][0]
        fresh.setdefault("status", {}).update(
            phase="Running",
            startTime=now(),
            hostIP="127.0.0.1",
            podIP="127.0.0.1",
            containerStatuses=[
                {
                    "name": container["name"],
                    "ready": True,
                    "restartCount": 0,
                    "image": container["image"],
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": now()}},
                }
            ],
        )
        self.store.replace(POD, fresh)

    def _finish(self, uid: str, running: _Running, code: int, spec: Mapping[str, Any]) -> None:
        del self._running[uid]
        key = running.key
        pod = self.store.get(POD, *key)
        if pod is None or meta(pod)["uid"] != uid:
            return  # gone (a pod made again under its name starts on the next sync)
        if meta(pod).get("deletionTimestamp"):
            self.store.delete(POD, *key, grace=0)
            return
        message = (
            running.termination.read_text(errors="replace")[:4096]
            if running.termination.exists()
            else ""
        )
        if not message and code != 0 and spec.get("policy") == "FallbackToLogsOnError":
            message = running.log.read_bytes()[-_TAIL_BYTES:].decode(errors="replace")
        exit_code = code if code >= 0 else 128 - code
        reason = running.stopping or ("Completed" if code == 0 else "Error")
        container = pod["spec"]["containers"][0]
        terminated = {
            "exitCode": exit_code,
            "reason": reason,
            "startedAt": now(),
            "finishedAt": now(),
        }
        if message:
            terminated["message"] = message
        status = pod.setdefault("status", {})
        status.update(
            phase="Succeeded" if code == 0 and not running.stopping else "Failed",
            containerStatuses=[
                {
                    "name": container["name"],
                    "ready": False,
                    "restartCount": 0,
                    "image": container["image"],
                    "imageID": "",
                    "state": {"terminated": terminated},
                }
            ],
        )
        if running.stopping in ("Evicted", "DeadlineExceeded"):
            status["reason"] = running.stopping
            status["message"] = running.message
        self.store.replace(POD, pod)

    def _stop(self, running: _Running, why: str, grace: float) -> None:
        running.stopping = why
        if running.process is None:
            return
        self._signal(running.process, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        loop.call_later(max(grace, 0.0), self._signal, running.process, signal.SIGKILL)

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)

    def evict(self, namespace: str, name: str, message: str) -> None:
        """What node-pressure eviction does: kill the pod now, phase Failed, reason Evicted."""
        [running] = [r for r in self._running.values() if r.key == (namespace, name)]
        running.stopping, running.message = "Evicted", message
        if running.process is not None:
            self._signal(running.process, signal.SIGKILL)

    async def close(self) -> None:
        for running in list(self._running.values()):
            self._stop(running, "Deleted", 0)
        for running in list(self._running.values()):
            with contextlib.suppress(Exception):
                await running.task


class _Waiting(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
