"""CDI and KubeVirt, as far as Ferry meets them: DataVolumes and VirtualMachines move
through their real phases, and no faster than the claims beneath them.

CDI (``DataVolume``): a claim of the same name is made, owned by the DataVolume,
with the filesystem overhead CDI adds on ``Filesystem`` volumes. On a
``WaitForFirstConsumer`` class the DataVolume waits in phase ``WaitForFirstConsumer``
until something schedules a pod on its claim (CDI's default, honouring the
binding mode); ``PendingPopulation``, then ``Succeeded`` once the claim is bound
and its content is there. A ``blank`` source gets an empty ``disk.img`` of the
requested size (what CDI's blank importer writes). Sources that need CDI's
importer pod (``http``, ``imageio``, ``vddk``, ``upload``) are **not** modelled: their
DataVolumes stay ``ImportScheduled``/``UploadScheduled``.

KubeVirt (``VirtualMachine``): ``runStrategy: Always`` (or ``running: true``)
makes a ``VirtualMachineInstance`` owned by the VM; ``Halted`` deletes it. The
instance stays ``Pending`` until every claim and DataVolume it uses is bound and
succeeded, then goes ``Scheduling`` → ``Scheduled`` (on the node) → ``Running``
as its guest is booted by :mod:`.launcher` (QEMU, the local platform's runner),
and ends ``Succeeded`` (the guest powered off) or ``Failed`` with a reason. Not
modelled: restarting a VM's ended instance (upstream does, with a back-off, for
``Always``): it stays ended, and the VM says ``CrashLoopBackOff`` or ``Stopped``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ferry.testing.cluster.binder import SELECTED_NODE, quantity
from ferry.testing.cluster.launcher import NODE, Launcher
from ferry.testing.cluster.resources import (
    DATA_VOLUME,
    PV,
    PVC,
    STORAGE_CLASS,
    VIRTUAL_MACHINE,
    VMI,
    Kind,
)
from ferry.testing.cluster.store import Obj, Store, meta

FILESYSTEM_OVERHEAD = 0.055


def _owner(obj: Obj) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta(obj)["name"],
            "uid": meta(obj)["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _status(store: Store, kind: Kind, obj: Obj, **status: Any) -> None:
    current = obj.get("status") or {}
    wanted = {**current, **status}
    if wanted != current:
        obj["status"] = wanted
        store.replace(kind, obj)


def _phase(store: Store, kind: Kind, obj: Obj, phase: str, **status: Any) -> None:
    _status(store, kind, obj, phase=phase, **status)


def _phase_and_get(store: Store, vmi: Obj, phase: str, **status: Any) -> Obj:
    _phase(store, VMI, vmi, phase, **status)
    return store.require(VMI, meta(vmi)["namespace"], meta(vmi)["name"])


class Cdi:
    def __init__(self, store: Store) -> None:
        self.store = store

    def reconcile(self) -> None:
        for dv in self.store.list(DATA_VOLUME):
            if not meta(dv).get("deletionTimestamp"):
                self._data_volume(dv)

    def _data_volume(self, dv: Obj) -> None:
        namespace, name = meta(dv)["namespace"], meta(dv)["name"]
        spec = dv["spec"]
        claim = self.store.get(PVC, namespace, name)
        if claim is None:
            self.store.create(PVC, self._claim(dv))
            _phase(self.store, DATA_VOLUME, dv, "Pending", progress="N/A")
            return
        source = next(iter(spec.get("source") or {"blank": {}}))
        if (claim.get("status") or {}).get("phase") != "Bound":
            storage_class = self.store.get(
                STORAGE_CLASS, "", claim["spec"].get("storageClassName", "")
            )
            waits = (storage_class or {}).get("volumeBindingMode") == "WaitForFirstConsumer"
            chosen = (meta(claim).get("annotations") or {}).get(SELECTED_NODE)
            phase = "WaitForFirstConsumer" if waits and not chosen else "Pending"
            _phase(self.store, DATA_VOLUME, dv, phase, progress="N/A")
            return
        if source != "blank":
            scheduled = "UploadScheduled" if source == "upload" else "ImportScheduled"
            _phase(self.store, DATA_VOLUME, dv, scheduled, progress="N/A")
            return
        pv = self.store.get(PV, "", claim["spec"]["volumeName"]) or {}
        backing = Path(pv["spec"]["hostPath"]["path"])
        if backing.is_dir() and not (backing / "disk.img").exists():
            size = quantity(str(spec["storage"]["resources"]["requests"]["storage"]))
            with (backing / "disk.img").open("wb") as image:
                image.truncate(size)
        _phase(self.store, DATA_VOLUME, dv, "Succeeded", progress="100.0%")

    @staticmethod
    def _claim(dv: Obj) -> Obj:
        storage = dict(dv["spec"].get("storage") or dv["spec"].get("pvc") or {})
        size = quantity(str(storage["resources"]["requests"]["storage"]))
        if storage.get("volumeMode", "Filesystem") == "Filesystem":
            size = math.ceil(size / (1 - FILESYSTEM_OVERHEAD))
        spec = {
            k: v
            for k, v in storage.items()
            if k in ("accessModes", "volumeMode", "storageClassName")
        }
        spec.setdefault("accessModes", ["ReadWriteOnce"])
        spec["resources"] = {"requests": {"storage": str(size)}}
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": meta(dv)["name"],
                "namespace": meta(dv)["namespace"],
                "labels": dict(meta(dv).get("labels") or {}),
                "annotations": {"cdi.kubevirt.io/storage.contentType": "kubevirt"},
                "ownerReferences": _owner(dv),
            },
            "spec": spec,
        }


class KubeVirt:
    def __init__(self, store: Store, launcher: Launcher) -> None:
        self.store = store
        self.launcher = launcher

    def reconcile(self) -> None:
        for vm in self.store.list(VIRTUAL_MACHINE):
            if not meta(vm).get("deletionTimestamp"):
                self._vm(vm)
        for vmi in self.store.list(VMI):
            self._instance(vmi)
        present = {(meta(v)["namespace"], meta(v)["name"]) for v in self.store.list(VMI)}
        for key in self.launcher.guests():
            if key not in present:  # force-deleted: the guest goes at once
                self.launcher.stop(key, 0)

    def _vm(self, vm: Obj) -> None:
        namespace, name = meta(vm)["namespace"], meta(vm)["name"]
        spec = vm["spec"]
        strategy = spec.get("runStrategy") or ("Always" if spec.get("running") else "Halted")
        vmi = self.store.get(VMI, namespace, name)
        if strategy == "Halted":
            if vmi is not None and not meta(vmi).get("deletionTimestamp"):
                self.store.delete(VMI, namespace, name)
            printable = "Stopping" if vmi is not None else "Stopped"
            _status(self.store, VIRTUAL_MACHINE, vm, printableStatus=printable, ready=False)
            return
        if vmi is None:
            template = spec["template"]
            vmi = self.store.create(
                VMI,
                {
                    "apiVersion": "kubevirt.io/v1",
                    "kind": "VirtualMachineInstance",
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                        "ownerReferences": _owner(vm),
                    },
                    "spec": template["spec"],
                    "status": {"phase": "Pending"},
                },
            )
        phase = (vmi.get("status") or {}).get("phase", "Pending")
        if phase == "Pending" and self._unready(namespace, vmi["spec"].get("volumes") or []):
            printable = "WaitingForVolumeBinding"
        elif phase == "Running":
            printable = "Running"
        elif phase in ("Failed", "Succeeded"):
            failed = phase == "Failed" and strategy in ("Always", "RerunOnFailure")
            printable = "CrashLoopBackOff" if failed else "Stopped"
        else:
            printable = "Starting"
        ready = phase == "Running"
        _status(self.store, VIRTUAL_MACHINE, vm, printableStatus=printable, ready=ready)
        if phase == "Running":
            _status(self.store, VIRTUAL_MACHINE, vm, created=True)

    def _instance(self, vmi: Obj) -> None:
        """virt-controller and virt-handler: schedule a ready instance and boot it."""
        key = (meta(vmi)["namespace"], meta(vmi)["name"])
        if meta(vmi).get("deletionTimestamp"):
            grace = meta(vmi).get("deletionGracePeriodSeconds")
            self.launcher.stop(key, None if grace is None else float(grace))
            return
        phase = (vmi.get("status") or {}).get("phase", "Pending")
        if phase != "Pending" or self.launcher.launched(vmi):
            return
        if self._unready(key[0], vmi["spec"].get("volumes") or []):
            _phase(self.store, VMI, vmi, "Pending")
            return
        # The launcher pod is made and scheduled; its QEMU is started on the node.
        vmi = _phase_and_get(self.store, vmi, "Scheduling")
        vmi = _phase_and_get(self.store, vmi, "Scheduled", nodeName=NODE)
        self.launcher.start(vmi)

    def _unready(self, namespace: str, volumes: list[dict[str, Any]]) -> list[str]:
        waiting = []
        for volume in volumes:
            if "dataVolume" in volume:
                dv = self.store.get(DATA_VOLUME, namespace, volume["dataVolume"]["name"]) or {}
                if (dv.get("status") or {}).get("phase") != "Succeeded":
                    waiting.append(volume["name"])
            elif "persistentVolumeClaim" in volume:
                claim = (
                    self.store.get(PVC, namespace, volume["persistentVolumeClaim"]["claimName"])
                    or {}
                )
                if (claim.get("status") or {}).get("phase") != "Bound":
                    waiting.append(volume["name"])
        return waiting
