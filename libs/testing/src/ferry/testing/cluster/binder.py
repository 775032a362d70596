"""Claims, volumes and scheduling, by the rules of the PV controller, the external
provisioner and the scheduler's VolumeBinding plugin — and no more generous.

* A claim whose class is ``Immediate`` is provisioned and bound at once.
* A claim whose class is ``WaitForFirstConsumer`` stays ``Pending`` until the
  scheduler, placing a pod that uses it, writes ``volume.kubernetes.io/selected-node``
  on it (``PreBind``); only then does the provisioner make its volume on that node.
* A claim whose ``dataSourceRef`` names anything but a claim or a snapshot belongs
  to a volume populator: the provisioner ignores it, so it stays ``Pending`` (with
  the selected node, if a pod asked for it) until a PersistentVolume's
  ``claimRef`` names it; then the PV controller binds it, and the claim the
  volume was taken from becomes ``Lost``.
* A claim of a class that does not exist stays ``Pending`` forever.
* A pod is bound to a node only once every claim it uses is ``Bound``; until then
  it stays ``Pending`` with ``PodScheduled=False`` saying why, as the scheduler
  reports it. A volume with reclaim policy ``Delete`` goes when its claim does.

Volumes are local: a directory (Filesystem) or a sparse file (Block) under the
cluster's storage root, named in the PV's ``hostPath`` so the kubelet can map it.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from ferry.testing.cluster.resources import POD, PV, PVC, STORAGE_CLASS
from ferry.testing.cluster.store import Obj, Store, meta

SELECTED_NODE = "volume.kubernetes.io/selected-node"
PROVISIONER = "hostpath.stand-in.ferry.dev"
WAIT = "WaitForFirstConsumer"
_CLAIM_SOURCES = {("", "PersistentVolumeClaim"), ("snapshot.storage.k8s.io", "VolumeSnapshot")}


def quantity(text: str) -> int:
    units = {
        "Ki": 1 << 10,
        "Mi": 1 << 20,
        "Gi": 1 << 30,
        "Ti": 1 << 40,
        "k": 10**3,
        "M": 10**6,
        "G": 10**9,
    }
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))


def volume_nodes(pv: Obj) -> list[str]:
    """The nodes a local volume's required node affinity allows (empty: any)."""
    terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get(
        "nodeSelectorTerms"
    ) or []
    return [v for t in terms for e in t.get("matchExpressions", []) for v in e.get("values", [])]


def claims_of(pod: Obj) -> list[str]:
    return [
        v["persistentVolumeClaim"]["claimName"]
        for v in (pod.get("spec") or {}).get("volumes") or []
        if v.get("persistentVolumeClaim")
    ]


def for_populator(claim: Obj) -> bool:
    ref = (claim.get("spec") or {}).get("dataSourceRef") or {}
    return bool(ref) and (ref.get("apiGroup", ""), ref.get("kind")) not in _CLAIM_SOURCES


def _set_condition(obj: Obj, kind: str, status: str, reason: str, message: str) -> bool:
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    wanted = {"type": kind, "status": status, "reason": reason, "message": message}
    for condition in conditions:
        if condition["type"] == kind:
            if all(condition.get(k) == v for k, v in wanted.items()):
                return False
            condition.update(wanted)
            return True
    conditions.append(wanted)
    return True


class Binder:
    def __init__(self, store: Store, root: Path, nodes: list[str]) -> None:
        self.store = store
        self.root = root
        self.nodes = nodes
        self._chosen: dict[str, int] = {}  # node → the turn it was last chosen
        self._turn = 0

    def reconcile(self) -> None:
        for claim in self.store.list(PVC):
            self._claim(claim)
        for volume in self.store.list(PV):
            self._reclaim(volume)
        for pod in self.store.list(POD):
            if not (pod.get("spec") or {}).get("nodeName") and not meta(pod).get(
                "deletionTimestamp"
            ):
                self._schedule(pod)

    # -- the PV controller and the provisioner ---------------------------------------

    def _class(self, claim: Obj) -> Obj | None:
        name = (claim.get("spec") or {}).get("storageClassName")
        if name is None:
            defaults = [
                c
                for c in self.store.list(STORAGE_CLASS)
                if meta(c).get("annotations", {}).get("storageclass.kubernetes.io/is-default-class")
                == "true"
            ]
            return defaults[0] if defaults else None
        return self.store.get(STORAGE_CLASS, "", name)

    def _claim(self, claim: Obj) -> None:
        metadata = meta(claim)
        spec = claim.get("spec") or {}
        phase = (claim.get("status") or {}).get("phase")
        if spec.get("volumeName"):
            volume = self.store.get(PV, "", spec["volumeName"])
            ref = ((volume or {}).get("spec") or {}).get("claimRef") or {}
            if ref.get("uid") == metadata["uid"]:
                if phase != "Bound":
                    self._bind(claim, volume or {})
            elif phase != "Lost":
                claim.setdefault("status", {})["phase"] = "Lost"
                self.store.replace(PVC, claim)
            return
        for volume in self.store.list(PV):
            ref = (volume.get("spec") or {}).get("claimRef") or {}
            same = (ref.get("namespace"), ref.get("name")) == (
                metadata["namespace"],
                metadata["name"],
            )
            if same and ref.get("uid") in (None, "", metadata["uid"]):
                self._bind(claim, volume)
                return
        if phase is None:
            claim.setdefault("status", {})["phase"] = "Pending"
            self.store.replace(PVC, claim)
            return
        storage_class = self._class(claim)
        if storage_class is None or for_populator(claim) or metadata.get("deletionTimestamp"):
            return
        node = (metadata.get("annotations") or {}).get(SELECTED_NODE, "")
        if storage_class.get("volumeBindingMode") == WAIT and not node:
            return
        self._provision(claim, storage_class, node)

    def _provision(self, claim: Obj, storage_class: Obj, node: str) -> None:
        metadata, spec = meta(claim), claim.get("spec") or {}
        name = f"pvc-{metadata['uid']}"
        size = quantity(str(spec["resources"]["requests"]["storage"]))
        mode = spec.get("volumeMode") or "Filesystem"
        backing = self.root / "volumes" / name
        backing.parent.mkdir(parents=True, exist_ok=True)
        if mode == "Block":
            with backing.open("wb") as file:
                file.truncate(size)
        else:
            backing.mkdir(exist_ok=True)
        volume: Obj = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": name,
                "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
            },
            "spec": {
                "capacity": {"storage": str(size)},
                "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                "volumeMode": mode,
                "storageClassName": meta(storage_class)["name"],
                "persistentVolumeReclaimPolicy": storage_class.get("reclaimPolicy", "Delete"),
                "hostPath": {"path": str(backing)},
                "claimRef": {
                    "kind": "PersistentVolumeClaim",
                    "namespace": metadata["namespace"],
                    "name": metadata["name"],
                    "uid": metadata["uid"],
                },
            },
        }
        if node:
            volume["spec"]["nodeAffinity"] = {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node],
                                }
                            ]
                        }
                    ]
                }
            }
        self.store.create(PV, volume)

    def _bind(self, claim: Obj, volume: Obj) -> None:
        claim["spec"]["volumeName"] = meta(volume)["name"]
        claim["status"] = {
            **(claim.get("status") or {}),
            "phase": "Bound",
            "capacity": volume["spec"]["capacity"],
            "accessModes": volume["spec"]["accessModes"],
        }
        self.store.replace(PVC, claim)
        ref = volume["spec"]["claimRef"]
        ref["uid"] = meta(claim)["uid"]
        volume["status"] = {"phase": "Bound"}
        self.store.replace(PV, volume)

    def _reclaim(self, volume: Obj) -> None:
        ref = (volume.get("spec") or {}).get("claimRef") or {}
        claim = self.store.get(PVC, ref.get("namespace", ""), ref.get("name", ""))
        if claim is not None and meta(claim)["uid"] == ref.get("uid"):
            return
        if claim is not None and not ref.get("uid"):
            return
        if (volume.get("status") or {}).get("phase") != "Bound":
            return  # pre-bound to a claim that is not there yet
        if volume["spec"].get("persistentVolumeReclaimPolicy", "Delete") != "Delete":
            if volume["status"].get("phase") != "Released":
                volume["status"]["phase"] = "Released"
                self.store.replace(PV, volume)
            return
        path = Path(volume["spec"]["hostPath"]["path"])
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        self.store.delete(PV, "", meta(volume)["name"])

    # -- the scheduler ---------------------------------------------------------------

    def _schedule(self, pod: Obj) -> None:
        namespace = meta(pod)["namespace"]
        why, node, waiting = "", "", []
        nodes = list(self.nodes)
        for name in claims_of(pod):
            claim = self.store.get(PVC, namespace, name)
            if claim is None or meta(claim).get("deletionTimestamp"):
                why = f'persistentvolumeclaim "{name}" not found'
                break
            volume_name = (claim.get("spec") or {}).get("volumeName")
            if volume_name:
                nodes = [n for n in nodes if self._fits(volume_name, n)]
                continue
            storage_class = self._class(claim)
            if storage_class is None:
                wanted = (claim.get("spec") or {}).get("storageClassName")
                why = f'storageclass.storage.k8s.io "{wanted}" not found'
                break
            if storage_class.get("volumeBindingMode") != WAIT:
                why = "pod has unbound immediate PersistentVolumeClaims"
                break
            chosen = (meta(claim).get("annotations") or {}).get(SELECTED_NODE)
            if chosen:
                nodes = [n for n in nodes if n == chosen]
            waiting.append(claim)
        if not why and not nodes:
            why = (
                f"0/{len(self.nodes)} nodes are available: "
                "node(s) had volume node affinity conflict"
            )
        if why:
            if _set_condition(pod, "PodScheduled", "False", "Unschedulable", why):
                pod["status"].setdefault("phase", "Pending")
                self.store.replace(POD, pod)
            return
        node = self._least_busy(nodes)
        for claim in waiting:  # PreBind: the provisioner takes it from here
            annotations = meta(claim).setdefault("annotations", {})
            if annotations.get(SELECTED_NODE) != node:
                annotations[SELECTED_NODE] = node
                self.store.replace(PVC, claim)
        unbound = [meta(c)["name"] for c in waiting if not self._bound_now(c)]
        if unbound:
            message = (
                'running PreBind plugin "VolumeBinding": binding volumes: '
                f"waiting for {', '.join(unbound)}"
            )
            if _set_condition(pod, "PodScheduled", "False", "SchedulerError", message):
                pod["status"].setdefault("phase", "Pending")
                self.store.replace(POD, pod)
            return
        pod["spec"]["nodeName"] = node
        _set_condition(pod, "PodScheduled", "True", "", "")
        pod["status"]["phase"] = "Pending"
        self.store.replace(POD, pod)

    def _least_busy(self, nodes: list[str]) -> str:
        """The scheduler's scoring, as far as it matters here: of the nodes that fit, the
        one running the fewest pods (LeastAllocated and the default topology spread both
        move the next pod away from busy nodes). Upstream picks at random among equal
        scores; here the tie goes to the node chosen least recently, so that two pods
        made one after the other land on two nodes, as they may in a cluster."""
        running: dict[str, int] = dict.fromkeys(nodes, 0)
        for pod in self.store.list(POD):
            node = (pod.get("spec") or {}).get("nodeName")
            phase = (pod.get("status") or {}).get("phase")
            if node in running and phase not in ("Succeeded", "Failed"):
                running[node] += 1
        chosen = min(nodes, key=lambda n: (running[n], self._chosen.get(n, -1), nodes.index(n)))
        self._turn += 1
        self._chosen[chosen] = self._turn
        return chosen

    def _bound_now(self, claim: Obj) -> bool:
        fresh = self.store.get(PVC, meta(claim)["namespace"], meta(claim)["name"]) or {}
        return (fresh.get("status") or {}).get("phase") == "Bound"

    def _fits(self, volume_name: str, node: str) -> bool:
        allowed = volume_nodes(self.store.get(PV, "", volume_name) or {})
        return not allowed or node in allowed
