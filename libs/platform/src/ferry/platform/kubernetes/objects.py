"""The cluster objects a volume becomes, as plain dicts: pure data in, data out.

Three shapes, as in the established workflow (Forklift on CDI):

* **importer** — a plain PVC (no ``dataSource``) that Ferry's own transfer pod
  writes, round after round for a warm migration (:func:`transfer_claim`; why not a
  CDI DataVolume: :mod:`ferry.platform.kubernetes.rounds`). Its round-0 result is
  kept in the :data:`ANNOTATION_COPY` annotation: the claim holds a full copy once
  that is there.
* **blank** — a ``DataVolume`` with ``source.blank``: an empty disk of the
  right size that virt-v2v fills.
* **populator** — a plain PVC whose ``dataSourceRef`` names Ferry's own
  populator CR. Forklift uses ``forklift.konveyor.io`` ``OvirtVolumePopulator``
  / ``OpenstackVolumePopulator`` (spec: where to read, which secret; status:
  ``progress``); Ferry defines the same shape in its own group
  ``populators.ferry.dev``, kind ``FerryVolumePopulator``, whose CRD is
  :data:`POPULATOR_CRD`. The populator controller (lib-volume-populator
  style: prime PVC, fill, re-bind) is a separate component, not this module.

Sizes: a DataVolume uses CDI's ``spec.storage`` API and asks for the disk's
capacity (aligned to 1 MiB); CDI itself adds the filesystem overhead from the
cluster's CDIConfig for the storage class, which Ferry cannot know from
outside. A populator PVC bypasses CDI, so Ferry adds the overhead itself with
:func:`ferry.platform.volumes.required_size`, as Forklift does for its
populator claims.

Every builder's result passes :func:`validate_object` before it is sent:
KubeVirt/CDI/core kinds against the real schemas (``ferry.platform.schemas``),
Ferry's populator CR against the CRD below.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import jsonschema.exceptions  # type: ignore[import-untyped,unused-ignore]

from ferry.platform import schemas
from ferry.platform.kubernetes.client import DATA_VOLUME, PVC, Resource
from ferry.platform.kubevirt import label_value
from ferry.platform.volumes import (
    ALIGN,
    VolumeRequest,
    required_size,
)
from ferry.proto import label
from ferry.proto.inventory import VolumeMode
from ferry.proto.volume import VolumeSource

POPULATOR_GROUP = "populators.ferry.dev"
POPULATOR_VERSION = "v1alpha1"
POPULATOR_KIND = "FerryVolumePopulator"
POPULATOR = Resource(POPULATOR_GROUP, POPULATOR_VERSION, "ferryvolumepopulators", POPULATOR_KIND)

ANNOTATION_SOURCE = "ferry.io/volume-source"
ANNOTATION_DISK = "ferry.io/disk-id"
ANNOTATION_CAPACITY = "ferry.io/capacity"
ANNOTATION_FORMAT = "ferry.io/format"
ANNOTATION_COPY = "ferry.io/full-copy"  # an importer claim's verified round-0 result (JSON)
# Keep a finished DataVolume: CDI may garbage-collect completed ones, and then
# "find by labels" would no longer find what this migration made.
ANNOTATION_KEEP_DV = "cdi.kubevirt.io/storage.deleteAfterCompletion"


_POPULATOR_SPEC: dict[str, Any] = {
    "type": "object",
    "required": ["migration", "vm", "diskId", "capacity", "format"],
    "properties": {
        "migration": {"type": "string", "minLength": 1},
        "vm": {"type": "string", "minLength": 1},
        "diskId": {"type": "string", "minLength": 1},
        "capacity": {"type": "integer", "minimum": 1, "format": "int64"},
        "format": {"type": "string", "enum": ["raw", "qcow2"]},
        "transferNetwork": {"type": "string"},
    },
    "additionalProperties": False,
}
_CHECKSUM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "algorithm": {"type": "string"},
        "digest": {"type": "string"},
        "bytes": {"type": "integer", "format": "int64"},
    },
}
_POPULATOR_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "progress": {"type": "string"},  # percent, as Forklift's populators report it
        "phase": {"type": "string"},
        "message": {"type": "string"},
        # What the populator pod reported when it finished: kept here because the pod
        # is gone by the time a redelivered CopyDisks asks again.
        "result": {
            "type": "object",
            "properties": {
                "bytes_copied": {"type": "integer", "format": "int64"},
                "seconds": {"type": "number"},
                "source": _CHECKSUM,
                "target": _CHECKSUM,
            },
        },
    },
}

POPULATOR_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{POPULATOR.plural}.{POPULATOR_GROUP}"},
    "spec": {
        "group": POPULATOR_GROUP,
        "scope": "Namespaced",
        "names": {
            "kind": POPULATOR_KIND,
            "listKind": f"{POPULATOR_KIND}List",
            "plural": POPULATOR.plural,
            "singular": POPULATOR_KIND.lower(),
        },
        "versions": [
            {
                "name": POPULATOR_VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "required": ["spec"],
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": _POPULATOR_SPEC,
                            "status": _POPULATOR_STATUS,
                        },
                    }
                },
            }
        ],
    },
}


@functools.cache
def _populator_validator() -> jsonschema.Draft4Validator:
    version = POPULATOR_CRD["spec"]["versions"][0]
    schema = dict(version["schema"]["openAPIV3Schema"])
    schema["additionalProperties"] = False  # strict, like schemas.validate
    return jsonschema.Draft4Validator(schema)


def validate_object(obj: Mapping[str, Any]) -> None:
    """Raise :class:`~ferry.platform.schemas.SchemaValidationError` unless ``obj`` is valid.

    Ferry's own populator CR is checked against :data:`POPULATOR_CRD` (its
    group is in no published schema); everything else by ``schemas.validate``.
    """
    if obj.get("apiVersion") == POPULATOR.api_version:
        if obj.get("kind") != POPULATOR_KIND:
            raise schemas.SchemaValidationError(str(obj.get("kind")), "$.kind", "unknown kind")
        errors = list(_populator_validator().iter_errors(dict(obj)))
        if errors:
            first = jsonschema.exceptions.best_match(errors)
            raise schemas.SchemaValidationError(
                POPULATOR_KIND, first.json_path, first.message, len(errors)
            )
        return
    schemas.validate(obj)


def volume_labels(migration: str, vm: str, disk_id: str | None = None) -> dict[str, str]:
    """The ownership labels, as valid label values (ids may hold ``/`` or spaces)."""
    labels = {label.MIGRATION: label_value(migration), label.VM: label_value(vm)}
    if disk_id is not None:
        labels[label.DISK] = label_value(disk_id)
    return labels


def aligned(capacity: int) -> int:
    return -(-capacity // ALIGN) * ALIGN


def _annotations(request: VolumeRequest, fmt: str) -> dict[str, str]:
    return {
        ANNOTATION_SOURCE: str(request.source),
        ANNOTATION_DISK: request.disk_id,
        ANNOTATION_CAPACITY: str(request.capacity),
        ANNOTATION_FORMAT: fmt,
    }


def _metadata(name: str, request: VolumeRequest, fmt: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": request.namespace,
        "labels": volume_labels(request.migration, request.vm, request.disk_id),
        "annotations": _annotations(request, fmt),
    }


def _storage_fields(request: VolumeRequest) -> dict[str, Any]:
    target = request.target
    fields: dict[str, Any] = {
        "accessModes": list(target.access_modes),
        "volumeMode": str(target.volume_mode),
    }
    if target.storage_class:
        fields["storageClassName"] = target.storage_class
    return fields


def data_volume(request: VolumeRequest, name: str, fmt: str) -> dict[str, Any]:
    """A ``cdi.kubevirt.io/v1beta1`` DataVolume with ``source.blank``: virt-v2v fills it."""
    if request.source != VolumeSource.BLANK:
        raise ValueError(f"a {request.source} volume is not a DataVolume")
    source: dict[str, Any] = {"blank": {}}
    metadata = _metadata(name, request, fmt)
    metadata["annotations"][ANNOTATION_KEEP_DV] = "false"
    storage = _storage_fields(request)
    storage["resources"] = {"requests": {"storage": str(aligned(request.capacity))}}
    return {
        "apiVersion": DATA_VOLUME.api_version,
        "kind": DATA_VOLUME.kind,
        "metadata": metadata,
        "spec": {"source": source, "storage": storage, "contentType": "kubevirt"},
    }


def populator_claim(request: VolumeRequest, name: str, fmt: str, overhead: float) -> dict[str, Any]:
    """A PVC filled by Ferry's populator: ``dataSourceRef`` → the CR of the same name."""
    mode = request.target.volume_mode
    spec = _storage_fields(request)
    size = required_size(request.capacity, mode, overhead)
    spec["resources"] = {"requests": {"storage": str(size)}}
    spec["dataSourceRef"] = {"apiGroup": POPULATOR_GROUP, "kind": POPULATOR_KIND, "name": name}
    return {
        "apiVersion": PVC.api_version,
        "kind": PVC.kind,
        "metadata": _metadata(name, request, fmt),
        "spec": spec,
    }


def transfer_claim(request: VolumeRequest, name: str, fmt: str, overhead: float) -> dict[str, Any]:
    """An importer volume: a plain PVC that Ferry's transfer pods fill; sized like a
    populator claim (no CDI adds the filesystem overhead)."""
    if request.source != VolumeSource.IMPORTER:
        raise ValueError(f"a {request.source} volume is not an importer claim")
    spec = _storage_fields(request)
    size = required_size(request.capacity, request.target.volume_mode, overhead)
    spec["resources"] = {"requests": {"storage": str(size)}}
    return {
        "apiVersion": PVC.api_version,
        "kind": PVC.kind,
        "metadata": _metadata(name, request, fmt),
        "spec": spec,
    }


def populator_cr(request: VolumeRequest, name: str, fmt: str) -> dict[str, Any]:
    """What the populator controller reads: which disk of which migration, how big, what format."""
    return {
        "apiVersion": POPULATOR.api_version,
        "kind": POPULATOR_KIND,
        "metadata": _metadata(name, request, fmt),
        "spec": {
            "migration": request.migration,
            "vm": request.vm,
            "diskId": request.disk_id,
            "capacity": request.capacity,
            "format": fmt,
        },
    }


def pvcinit_name(migration: str, vm: str) -> str:
    return "pvcinit-" + hashlib.sha256(f"{migration}\0{vm}".encode()).hexdigest()[:12]


def pvcinit_pod(
    namespace: str,
    migration: str,
    vm: str,
    claims: Sequence[tuple[str, VolumeMode]],
    image: str,
    deadline_seconds: int,
) -> dict[str, Any]:
    """A pod that only mounts every claim of a VM, so WaitForFirstConsumer binds them together.

    The scheduler picks one node for the pod and the provisioner then binds
    every claim there, or none. The container does nothing (``sleep``); it
    runs under the ``restricted`` pod security profile.
    """
    mounts: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []
    for index, (claim, mode) in enumerate(claims):
        volume = f"disk-{index}"
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": claim}})
        if mode == VolumeMode.BLOCK:
            devices.append({"name": volume, "devicePath": f"/dev/disk-{index}"})
        else:
            mounts.append({"name": volume, "mountPath": f"/disks/{index}"})
    container: dict[str, Any] = {
        "name": "pvcinit",
        "image": image,
        "command": ["sleep", str(deadline_seconds)],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
    }
    if mounts:
        container["volumeMounts"] = mounts
    if devices:
        container["volumeDevices"] = devices
    labels = {**volume_labels(migration, vm), label.PVCINIT: "true", label.TEMPORARY: "true"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pvcinit_name(migration, vm), "namespace": namespace, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline_seconds,
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": False,
            "containers": [container],
            "volumes": volumes,
        },
    }


_SUFFIXES = {
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
    "Pi": 1024**5,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "P": 1000**5,
}


def quantity(text: str) -> int:
    """Bytes in a Kubernetes storage quantity (``"1Gi"``, ``"1073741824"``, ``"1.5G"``)."""
    text = text.strip()
    for suffix, factor in _SUFFIXES.items():
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(float(text))
