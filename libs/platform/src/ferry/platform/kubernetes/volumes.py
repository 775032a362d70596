""":class:`~ferry.platform.volumes.VolumePlatform` on a cluster with CDI.

A volume is a blank DataVolume (its PVC has the same name), a PVC whose
``dataSourceRef`` names a ``FerryVolumePopulator``, or a plain PVC that Ferry's
transfer pods fill (importer; see :mod:`ferry.platform.kubernetes.objects`). Every
volume is found by its labels (migration, VM, disk) before anything is created,
and a 409 on create is answered by reading what is there, so a redelivered command
never makes a second volume.

Bytes move inside the cluster, in pods running Ferry's copy program: the populator
pod (:meth:`KubeVolumes.populate`) and, for flow 1, one transfer pod per round on the
VM's claim (:meth:`KubeVolumes.import_disk`, :meth:`KubeVolumes.apply_changes`; see
:mod:`ferry.platform.kubernetes.rounds`). Both report the checksums their pod
computed while it wrote and read back. Under a bandwidth budget each copy holds a
grant ticket of the volume-service's broker (:mod:`~ferry.platform.kubernetes.pacing`)
while it runs, and its pod asks it before every chunk.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from ferry.platform.images import ImageRef
from ferry.platform.kubernetes import grants, objects
from ferry.platform.kubernetes.binding import Pvcinit
from ferry.platform.kubernetes.client import (
    DATA_VOLUME,
    POD,
    PVC,
    SECRET,
    AlreadyExists,
    ClusterError,
    KubeClient,
)
from ferry.platform.kubernetes.objects import POPULATOR
from ferry.platform.kubernetes.pacing import Broker
from ferry.platform.kubernetes.populator import Populator
from ferry.platform.kubernetes.rounds import Rounds, copy_of, to_copy
from ferry.platform.kubevirt import label_value
from ferry.platform.settings import KubernetesSettings
from ferry.platform.volumes import (
    Phase,
    ProgressCallback,
    Rate,
    VolumeConflict,
    VolumeError,
    VolumeNotFound,
    VolumePlatform,
    VolumeRequest,
    VolumeState,
    required_size,
    volume_name,
)
from ferry.proto import label
from ferry.proto.inventory import DiskCopy, VolumeMode
from ferry.proto.volume import VolumeSource

log = logging.getLogger(__name__)

_IN_PROGRESS = {
    "ImportScheduled",
    "ImportInProgress",
    "UploadScheduled",
    "UploadReady",
    "CloneScheduled",
    "CloneInProgress",
    "PopulatorInProgress",
}


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def _annotation(obj: Mapping[str, Any], key: str, default: str = "") -> str:
    return str((_meta(obj).get("annotations") or {}).get(key, default))


def _reason(obj: Mapping[str, Any]) -> str:
    """The most telling condition message of a DataVolume or pod."""
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("message") and condition.get("status") != "True":
            return str(condition["message"])
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("message"):
            return str(condition["message"])
    return ""


def _is_ours(obj: Mapping[str, Any]) -> bool:
    return bool(_annotation(obj, objects.ANNOTATION_SOURCE))


def state_of(obj: Mapping[str, Any], pvc: Mapping[str, Any] | None, overhead: float) -> VolumeState:
    """The :class:`VolumeState` of a DataVolume (with its PVC) or of a populator PVC."""
    meta = _meta(obj)
    spec = obj.get("spec") or {}
    storage = spec.get("storage") or spec
    source = VolumeSource(_annotation(obj, objects.ANNOTATION_SOURCE))
    capacity = int(_annotation(obj, objects.ANNOTATION_CAPACITY, "0"))
    mode = VolumeMode(storage.get("volumeMode") or VolumeMode.FILESYSTEM)
    claim = pvc if pvc is not None else (obj if obj.get("kind") == PVC.kind else None)
    pvc_phase = str(((claim or {}).get("status") or {}).get("phase") or "")
    requested = ((claim or {}).get("spec") or {}).get("resources", {}).get("requests", {})
    size = (
        objects.quantity(str(requested["storage"]))
        if "storage" in requested
        else required_size(capacity, mode, overhead)
    )
    phase, reason = _phase(obj, source, pvc_phase)
    state = VolumeState(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        source=source,
        labels=dict(meta.get("labels") or {}),
        disk_id=_annotation(obj, objects.ANNOTATION_DISK),
        storage_class=str(storage.get("storageClassName") or ""),
        volume_mode=mode,
        access_modes=list(storage.get("accessModes") or []),
        capacity=capacity,
        size=size,
        format=_annotation(obj, objects.ANNOTATION_FORMAT, "raw"),
        phase=phase,
        pv=str(((claim or {}).get("spec") or {}).get("volumeName") or ""),
        reason=reason,
    )
    done = copy_of(dict(obj)) if source == VolumeSource.IMPORTER else None
    if done is None or phase != Phase.SUCCEEDED:
        return state
    return msgspec.structs.replace(state, copy=to_copy(state, done))


def _phase(obj: Mapping[str, Any], source: VolumeSource, pvc_phase: str) -> tuple[Phase, str]:
    if pvc_phase == "Lost":
        return Phase.FAILED, "the claim lost its PersistentVolume"
    if obj.get("kind") == PVC.kind and source == VolumeSource.IMPORTER:
        # a transfer claim is a full copy once round 0's verified result is on it
        if pvc_phase != "Bound":
            return Phase.PENDING, ""
        return (Phase.SUCCEEDED if copy_of(dict(obj)) else Phase.BOUND), ""
    if obj.get("kind") == PVC.kind:  # populator: the claim binds only once it is filled
        return (Phase.SUCCEEDED if pvc_phase == "Bound" else Phase.PENDING), ""
    dv_phase = str((obj.get("status") or {}).get("phase") or "")
    if dv_phase == "Failed":
        return Phase.FAILED, _reason(obj) or "the DataVolume failed"
    if dv_phase == "Succeeded":
        # A blank DataVolume "succeeds" as soon as its empty image exists.
        return (Phase.BOUND if source == VolumeSource.BLANK else Phase.SUCCEEDED), ""
    if dv_phase in _IN_PROGRESS:
        return Phase.POPULATING, ""
    return (Phase.BOUND if pvc_phase == "Bound" else Phase.PENDING), ""


def _check_same(existing: VolumeState, request: VolumeRequest, fmt: str) -> None:
    wanted = {
        "source": request.source,
        "capacity": request.capacity,
        "storage_class": request.target.storage_class,
        "volume_mode": request.target.volume_mode,
        "format": fmt,
    }
    differs = [
        f"{k}: {getattr(existing, k)} ≠ {v}" for k, v in wanted.items() if getattr(existing, k) != v
    ]
    if differs:
        raise VolumeConflict(
            f"volume {existing.name} exists with another shape ({', '.join(differs)})"
        )


def _format(request: VolumeRequest) -> str:
    fmt = request.target.format or "raw"
    if fmt not in {"raw", "qcow2"}:
        raise VolumeError(f"disk {request.disk_id}: volume format {fmt!r} is not raw or qcow2")
    if request.target.volume_mode == VolumeMode.BLOCK and fmt != "raw":
        raise VolumeError(f"disk {request.disk_id}: a Block volume holds raw data, not {fmt}")
    if request.capacity <= 0:
        raise VolumeError(f"disk {request.disk_id}: capacity must be positive")
    return fmt


class KubeVolumes:
    def __init__(
        self, client: KubeClient, settings: KubernetesSettings, broker: Broker | None = None
    ) -> None:
        self.client = client
        self.settings = settings
        self.broker = broker or Broker()

    @contextlib.contextmanager
    def _paced(self, volume: VolumeState, rate: Rate | None) -> Iterator[grants.Ticket | None]:
        """The copy's grant ticket while it runs (``None`` when no budget applies).

        A budget that applies is enforced or the copy is refused: with no ``pacing_url``
        a pod cannot reach the broker, and copying unpaced would break the budget's
        promise (to a source host, a link) without anyone asking for that."""
        if rate is None:
            yield None
            return
        if not self.settings.pacing_url:
            raise VolumeError(
                f"volume {volume.name}: a bandwidth budget applies, but pods cannot ask for "
                "grants: set platform.kubernetes.pacing_url (FERRY_PLATFORM__KUBERNETES__"
                "PACING_URL) to the volume-service's HTTP address as pods reach it"
            )
        # the address only: the token is the copy's secret
        log.info(
            "volume %s: its pod asks %s for bandwidth grants", volume.name, self.settings.pacing_url
        )
        with self.broker.ticket(rate) as token:
            yield grants.Ticket(url=self.settings.pacing_url, token=token)

    # -- lookups ---------------------------------------------------------------------

    async def list_volumes(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        wanted = {k: label_value(v) for k, v in labels.items()}
        dvs = await self.client.list(DATA_VOLUME, namespace, wanted)
        pvcs = await self.client.list(PVC, namespace, wanted)
        claims = {_meta(p)["name"]: p for p in pvcs}
        found: list[VolumeState] = []
        for dv in dvs:
            if _is_ours(dv):
                claim = claims.pop(_meta(dv)["name"], None)
                if claim is None:
                    claim = await self.client.get(PVC, namespace, _meta(dv)["name"])
                found.append(state_of(dv, claim, self.settings.filesystem_overhead))
        for pvc in claims.values():
            if _is_ours(pvc):
                found.append(state_of(pvc, None, self.settings.filesystem_overhead))
        return sorted(found, key=lambda v: v.name)

    async def get_volume(self, namespace: str, name: str) -> VolumeState | None:
        dv = await self.client.get(DATA_VOLUME, namespace, name)
        pvc = await self.client.get(PVC, namespace, name)
        if dv is not None and _is_ours(dv):
            return state_of(dv, pvc, self.settings.filesystem_overhead)
        if pvc is not None and _is_ours(pvc):
            return state_of(pvc, None, self.settings.filesystem_overhead)
        return None

    async def _require(self, namespace: str, name: str) -> VolumeState:
        found = await self.get_volume(namespace, name)
        if found is None:
            raise VolumeNotFound(f"no volume {namespace}/{name}")
        return found

    # -- ensure ----------------------------------------------------------------------

    async def ensure_volume(self, request: VolumeRequest) -> VolumeState:
        fmt = _format(request)
        labels = objects.volume_labels(request.migration, request.vm, request.disk_id)
        found = await self.list_volumes(request.namespace, labels)
        if found:
            _check_same(found[0], request, fmt)
            there = found[0]
            if request.source == VolumeSource.POPULATOR and not there.pv:
                cr = await self.client.get(POPULATOR, request.namespace, there.name)
                if cr is None:  # a crash between the CR and the claim, in either order
                    await self._create(objects.populator_cr(request, there.name, fmt))
            return there
        name = volume_name(request.migration, request.vm, request.disk_id, request.vm_name)
        overhead = self.settings.filesystem_overhead
        if request.source == VolumeSource.POPULATOR:
            made = [
                objects.populator_cr(request, name, fmt),
                objects.populator_claim(request, name, fmt, overhead),
            ]
        elif request.source == VolumeSource.IMPORTER:
            made = [objects.transfer_claim(request, name, fmt, overhead)]
        else:
            made = [objects.data_volume(request, name, fmt)]
        for obj in made:  # all valid before the first is sent
            objects.validate_object(obj)
        for obj in made:
            await self._create(obj)
        state = await self.get_volume(request.namespace, name)
        if state is None:
            raise VolumeConflict(f"volume {request.namespace}/{name} vanished after create")
        if state.labels != {**state.labels, **labels}:
            raise VolumeConflict(f"volume {request.namespace}/{name} exists with other labels")
        _check_same(state, request, fmt)
        return state

    async def _create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj``; on 409 return what is there when it carries the same labels."""
        objects.validate_object(obj)
        resource = {
            DATA_VOLUME.kind: DATA_VOLUME,
            PVC.kind: PVC,
            POD.kind: POD,
            POPULATOR.kind: POPULATOR,
        }[obj["kind"]]
        meta = obj["metadata"]
        try:
            return await self.client.create(resource, obj)
        except AlreadyExists:
            there = await self.client.get(resource, meta["namespace"], meta["name"])
            if there is None:
                raise
            labels = _meta(there).get("labels") or {}
            if any(labels.get(k) != v for k, v in meta.get("labels", {}).items()):
                raise VolumeConflict(
                    f"{obj['kind']} {meta['namespace']}/{meta['name']} exists with other labels"
                ) from None
            return there

    # -- pvcinit ---------------------------------------------------------------------

    async def bind_volumes(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        """pvcinit (:mod:`~ferry.platform.kubernetes.binding`): every pending claim placed."""
        labels = objects.volume_labels(migration, vm)
        states = await self.list_volumes(namespace, labels)
        if await Pvcinit(self.client, self.settings).bind(namespace, migration, vm, states):
            return await self.list_volumes(namespace, labels)
        return states

    # -- transfers -------------------------------------------------------------------

    async def import_disk(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        """Round 0 of flow 1 (:mod:`~ferry.platform.kubernetes.rounds`): a transfer pod
        copies the whole disk into the claim; its verified result is kept on the claim."""
        if volume.source != VolumeSource.IMPORTER:
            raise VolumeError(f"volume {volume.name} is a {volume.source} volume, not importer")
        with self._paced(volume, rate) as ticket:
            return await Rounds(self.client, self.settings).full(
                volume, source, progress, ticket=ticket
            )

    async def apply_changes(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        last: bool = False,
        rate: Rate | None = None,
    ) -> DiskCopy:
        """A later warm round: a transfer pod writes ``source.extents`` over the claim."""
        if volume.source != VolumeSource.IMPORTER:
            raise VolumeError(f"volume {volume.name} is a {volume.source} volume, not importer")
        with self._paced(volume, rate) as ticket:
            return await Rounds(self.client, self.settings).delta(
                volume, source, progress, last=last, ticket=ticket
            )

    async def populate(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        """Be the populator of the claim (:mod:`~ferry.platform.kubernetes.populator`).

        Prime claim, populator pod on the selected node, re-bind, prime deleted; the
        result carries the checksums the populator pod computed while it wrote.
        """
        if volume.source != VolumeSource.POPULATOR or volume.temporary:
            raise VolumeError(f"volume {volume.name} is not a populator volume")
        with self._paced(volume, rate) as ticket:
            return await Populator(self.client, self.settings).populate(
                volume, source, progress, ticket=ticket
            )

    # -- clean-up --------------------------------------------------------------------

    async def delete_temporary_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        """pvcinit pods, temporary claims, and the populator CRs of filled claims."""
        labels = objects.volume_labels(migration, vm)
        removed: list[str] = []
        for pod in await self.client.list(POD, namespace, {**labels, label.TEMPORARY: "true"}):
            if await self.client.delete(POD, namespace, _meta(pod)["name"], grace_seconds=0):
                removed.append(_meta(pod)["name"])
        for pvc in await self.client.list(PVC, namespace, {**labels, label.TEMPORARY: "true"}):
            if await self.client.delete(PVC, namespace, _meta(pvc)["name"]):
                removed.append(_meta(pvc)["name"])
        filled = {
            v.name
            for v in await self.list_volumes(namespace, labels)
            if v.source == VolumeSource.POPULATOR and v.phase == Phase.SUCCEEDED
        }
        for cr in await self._populators(namespace, labels):
            name = _meta(cr)["name"]
            if name in filled and await self.client.delete(POPULATOR, namespace, name):
                removed.append(f"{POPULATOR.kind}/{name}")
        return removed

    async def delete_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        """Everything this migration made for the VM: pods, DataVolumes, claims, populator CRs
        and the Secrets of populator jobs."""
        labels = objects.volume_labels(migration, vm)
        removed: list[str] = []
        for resource in (POD, SECRET, DATA_VOLUME, PVC):
            for obj in await self.client.list(resource, namespace, labels):
                name = _meta(obj)["name"]
                if await self.client.delete(resource, namespace, name) and name not in removed:
                    removed.append(name)
        for cr in await self._populators(namespace, labels):
            name = _meta(cr)["name"]
            if await self.client.delete(POPULATOR, namespace, name):
                removed.append(f"{POPULATOR.kind}/{name}")
        return removed

    async def _populators(self, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        try:
            return await self.client.list(POPULATOR, namespace, labels)
        except ClusterError as error:
            if error.status == 404:  # the CRD is not installed: there is nothing to remove
                return []
            raise


if TYPE_CHECKING:

    def _conforms(volumes: KubeVolumes) -> VolumePlatform:
        return volumes
