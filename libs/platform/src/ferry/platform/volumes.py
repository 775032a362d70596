"""The volume half of the target platform: DataVolumes, PVCs with populators, binding.

The volume-service programs against :class:`VolumePlatform` only. A volume is
always found by its labels (migration, VM, disk) before it is created, so a
redelivered or retried command finds the volume it made last time. The three
shapes follow the workflow:

* **importer DataVolume** — a volume plus an importer workload that streams the
  source disk in;
* **blank DataVolume** — an empty volume of the right size for virt-v2v to fill;
* **PVC + populator** — a temporary *prime* volume is filled by a populator
  workload, then its data is re-bound to the original claim in one atomic step
  and the prime is removed; the claim is never seen half-bound.

``bind_volumes`` is the ``pvcinit`` step: it binds every volume of a VM
together, before any data moves, so a VM never ends up with half its disks.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from enum import StrEnum
from typing import Protocol

import msgspec

from ferry.platform.images import ImageRef
from ferry.proto import label
from ferry.proto.inventory import DiskCopy, Volume, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource

# CDI's default: 5.5 % of a Filesystem volume goes to filesystem metadata, and
# the image is first aligned to 1 MiB (CDIConfig spec.filesystemOverhead.global).
DEFAULT_FILESYSTEM_OVERHEAD = 0.055
ALIGN = 1024 * 1024


class Phase(StrEnum):
    PENDING = "Pending"  # claim recorded, no storage yet
    BOUND = "Bound"  # storage allocated (pvcinit, or just before a transfer)
    POPULATING = "Populating"  # an importer or populator workload is writing
    SUCCEEDED = "Succeeded"  # data in place and verified
    FAILED = "Failed"  # the last transfer failed; ``reason`` says why


class VolumeRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the volume-service asks for: one volume for one source disk."""

    namespace: str
    migration: str
    vm: str  # the source VM id
    vm_name: str = ""  # for a readable volume name
    disk_id: str
    capacity: int  # the disk's virtual size in bytes
    target: VolumeTarget
    source: VolumeSource


class VolumeState(msgspec.Struct, frozen=True, kw_only=True):
    """A volume (claim) as the platform sees it now."""

    namespace: str
    name: str
    source: VolumeSource
    labels: dict[str, str]
    disk_id: str
    storage_class: str
    volume_mode: VolumeMode
    access_modes: list[str]
    capacity: int  # guest-visible size of the disk
    size: int  # requested storage: capacity plus filesystem overhead where needed
    format: str  # raw | qcow2
    phase: Phase = Phase.PENDING
    pv: str = ""  # the bound storage ("PersistentVolume"); empty while Pending
    path: str = ""  # local: the file that holds the data once bound
    prime_of: str = ""  # set on a populator's temporary prime volume
    reason: str = ""
    copy: DiskCopy | None = None

    @property
    def temporary(self) -> bool:
        return bool(self.prime_of)

    def to_proto(self) -> Volume:
        return Volume(
            disk_id=self.disk_id,
            name=self.name,
            size=self.size,
            capacity=self.capacity,
            path=self.path,
            format=self.format,
            phase=str(self.phase),
        )


class TransferProgress(msgspec.Struct, frozen=True, kw_only=True):
    disk_id: str
    volume: str
    done: int
    total: int
    rate: float


ProgressCallback = Callable[[TransferProgress], None]
# Waits until this many more bytes may move under the copy's bandwidth budgets (the
# volume-service's shared token buckets); a workload asks it before each chunk.
Rate = Callable[[int], Awaitable[None]]


class VolumeError(Exception):
    """A volume operation cannot be done as asked; ``reason`` says why."""

    permanent = True

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InsufficientStorage(VolumeError):
    """``bind_volumes`` found less free space than the VM's volumes need."""


class VolumeConflict(VolumeError):
    """A volume with the same labels exists but was asked for differently."""


class VolumeNotFound(VolumeError, LookupError):
    pass


def labels_for(migration: str, vm: str, disk_id: str | None = None) -> dict[str, str]:
    labels = {label.MIGRATION: migration, label.VM: vm}
    if disk_id is not None:
        labels[label.DISK] = disk_id
    return labels


def required_size(
    capacity: int, mode: VolumeMode, overhead: float = DEFAULT_FILESYSTEM_OVERHEAD
) -> int:
    """The storage to request for a disk of ``capacity`` bytes (CDI's rule).

    Block volumes hold the raw disk and need exactly its size. A Filesystem
    volume also holds the filesystem the image file lives in: the image is
    aligned up to 1 MiB, then divided by ``1 - overhead``.
    """
    if capacity <= 0:
        raise VolumeError(f"disk capacity must be positive, got {capacity}")
    if not 0 <= overhead < 1:
        raise VolumeError(f"filesystem overhead must be in [0, 1), got {overhead}")
    aligned = -(-capacity // ALIGN) * ALIGN
    if mode == VolumeMode.BLOCK:
        return aligned
    return math.ceil(aligned / (1 - overhead))


_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def _slug(text: str, limit: int) -> str:
    return _NOT_DNS.sub("-", text.lower()).strip("-")[:limit].strip("-")


def volume_name(migration: str, vm: str, disk_id: str, vm_name: str = "") -> str:
    """A DNS-1123 name that is the same every time for the same disk of a migration."""
    tag = hashlib.sha256(f"{migration}\0{vm}\0{disk_id}".encode()).hexdigest()[:10]
    readable = "-".join(p for p in (_slug(vm_name or vm, 30), _slug(disk_id, 16)) if p)
    return f"{readable or 'disk'}-{tag}"


class VolumePlatform(Protocol):
    """Target volumes: ensure, bind, fill, list, delete."""

    async def ensure_volume(self, request: VolumeRequest) -> VolumeState:
        """Find the volume by labels, or create it (importer/blank DataVolume, PVC+populator).

        Raises :class:`VolumeConflict` when a volume with those labels exists
        with another shape (size, storage class, source).
        """
        ...

    async def bind_volumes(self, namespace: str, migration: str, vm: str) -> list[VolumeState]:
        """pvcinit: allocate storage for every pending volume of the VM, all or none."""
        ...

    async def import_disk(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        """Run the importer workload into an importer DataVolume; resumes after a crash.

        ``rate``, when given, is awaited with each chunk's bytes before they move.
        """
        ...

    async def populate(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        rate: Rate | None = None,
    ) -> DiskCopy:
        """Prime volume → populator workload → atomic re-bind → prime removed."""
        ...

    async def apply_changes(
        self,
        volume: VolumeState,
        source: ImageRef,
        progress: ProgressCallback | None = None,
        *,
        last: bool = False,
        rate: Rate | None = None,
    ) -> DiskCopy:
        """A warm round: write only ``source.extents`` onto a volume an earlier round
        filled, leaving every other byte as it is; ``last`` (the source is off) also
        compares the whole disks' digests. ``rate``: as for :meth:`import_disk`."""
        ...

    async def list_volumes(self, namespace: str, labels: Mapping[str, str]) -> list[VolumeState]:
        """Every volume whose labels include all of ``labels``."""
        ...

    async def get_volume(self, namespace: str, name: str) -> VolumeState | None: ...

    async def delete_temporary_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        """Remove prime volumes and transfer scratch state of the VM; names removed."""
        ...

    async def delete_volumes(self, namespace: str, migration: str, vm: str) -> list[str]:
        """Remove every volume the migration created for the VM (failure, cancel)."""
        ...
