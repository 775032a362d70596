"""The API resources the stand-in serves, and the rules each kind follows there.

A resource the stand-in does not list answers 404, as a real API server does for
a CRD that is not installed: that is how "a cluster without Ferry's CRDs" looks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Kind:
    """One served resource: where it lives, and how its writes are checked."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = True  # has a status subresource: the main endpoint ignores status
    # spec fields a client may still change after create (None: all of spec)
    mutable_spec: frozenset[str] | None = None
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        return f"{self.group}/{self.version}/{self.plural}"


PVC = Kind(
    "",
    "v1",
    "persistentvolumeclaims",
    "PersistentVolumeClaim",
    # apiserver: "spec is immutable after creation except resources.requests and
    # volumeAttributesClassName for bound claims"; volumeName is the binder's.
    mutable_spec=frozenset({"resources", "volumeName", "volumeAttributesClassName"}),
)
PV = Kind("", "v1", "persistentvolumes", "PersistentVolume", namespaced=False)
POD = Kind(
    "",
    "v1",
    "pods",
    "Pod",
    # apiserver: only image, activeDeadlineSeconds, tolerations (additions) change.
    mutable_spec=frozenset({"activeDeadlineSeconds", "tolerations"}),
)
SECRET = Kind("", "v1", "secrets", "Secret", status=False)
CONFIG_MAP = Kind("", "v1", "configmaps", "ConfigMap", status=False)
EVENT = Kind("", "v1", "events", "Event", status=False)
STORAGE_CLASS = Kind(
    "storage.k8s.io", "v1", "storageclasses", "StorageClass", namespaced=False, status=False
)
DATA_VOLUME = Kind("cdi.kubevirt.io", "v1beta1", "datavolumes", "DataVolume")
VIRTUAL_MACHINE = Kind("kubevirt.io", "v1", "virtualmachines", "VirtualMachine")
VMI = Kind("kubevirt.io", "v1", "virtualmachineinstances", "VirtualMachineInstance")

BUILT_IN = (
    PVC,
    PV,
    POD,
    SECRET,
    CONFIG_MAP,
    EVENT,
    STORAGE_CLASS,
    DATA_VOLUME,
    VIRTUAL_MACHINE,
    VMI,
)


def from_crd(crd: dict[str, Any]) -> Kind:
    """The served kind of a ``CustomResourceDefinition`` (its storage version)."""
    spec = crd["spec"]
    [version] = [v for v in spec["versions"] if v.get("storage")]
    return Kind(
        spec["group"],
        version["name"],
        spec["names"]["plural"],
        spec["names"]["kind"],
        namespaced=spec.get("scope", "Namespaced") == "Namespaced",
        status="status" in (version.get("subresources") or {}),
        schema=version["schema"]["openAPIV3Schema"],
    )
