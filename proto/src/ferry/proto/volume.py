"""The volume-service's commands and events: target disks and their data."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from ferry.proto.base import Command, Failed, StepEvent
from ferry.proto.inventory import DiskCopy, ProviderType, Vm, Volume, VolumeTarget


class VolumeSource(StrEnum):
    """How a volume gets its data (the workflow's three shapes)."""

    IMPORTER = "importer"  # DataVolume whose importer streams the disk in
    BLANK = "blank"  # blank DataVolume, filled later by virt-v2v
    POPULATOR = "populator"  # PVC + populator: prime volume, transfer, rebind


class SourceRef(msgspec.Struct, frozen=True, kw_only=True):
    """Which provider to read from: by name, resolved from the objects bucket.

    Credentials are never here: the service reads the provider's secret itself.
    """

    provider: str
    type: ProviderType
    url: str = ""


class Bandwidth(msgspec.Struct, frozen=True, kw_only=True):
    """A Budget's bandwidth a copy moves under, shared by every copy it covers.

    ``account`` names the shared bucket (the budget, and the host / datastore /
    class it counts when it caps each one separately); ``budget`` is the Budget
    object, re-read by the mover so that a changed cap applies to running copies.
    """

    budget: str
    account: str
    bytes_per_second: float


class CreateVolumes(Command, frozen=True, kw_only=True, tag="volume.create_volumes.v1"):
    """CreateDataVolumes: one volume per disk, shaped by ``source``."""

    namespace: str
    source: VolumeSource
    provider: SourceRef
    inventory: Vm
    targets: list[VolumeTarget]


class VolumesCreated(StepEvent, frozen=True, kw_only=True, tag="volume.volumes_created.v1"):
    volumes: list[Volume] = msgspec.field(default_factory=list)


class AllocateDisks(Command, frozen=True, kw_only=True, tag="volume.allocate_disks.v1"):
    """AllocateDisks: the pvcinit step that binds every volume of a VM together."""

    namespace: str


class DisksAllocated(StepEvent, frozen=True, kw_only=True, tag="volume.disks_allocated.v1"):
    volumes: list[Volume] = msgspec.field(default_factory=list)


class CopyDisks(Command, frozen=True, kw_only=True, tag="volume.copy_disks.v1"):
    """CopyDisks: importer or populator transfer of every disk of a VM.

    ``precopy`` counts warm-migration rounds (0 for cold); ``final`` marks the
    last delta after the source was powered off. ``warm`` rounds read the source
    through its change tracking: ``since`` is the checkpoint the previous round
    returned ('' for the first, full round).
    """

    namespace: str
    provider: SourceRef
    inventory: Vm
    precopy: int = 0
    final: bool = True
    warm: bool = False
    since: str = ""
    # Every Budget with a bandwidth the VM touches: each disk's bytes wait for all of them.
    bandwidth: list[Bandwidth] = msgspec.field(default_factory=list)


class DiskProgress(StepEvent, frozen=True, kw_only=True, tag="volume.disk_progress.v1"):
    """Bytes done of one disk; throttled by the sender (a few per second at most)."""

    disk_id: str
    done: int
    total: int
    rate: float = 0.0  # bytes per second over the last interval
    precopy: int = 0  # warm-migration round this progress belongs to


class DisksCopied(StepEvent, frozen=True, kw_only=True, tag="volume.disks_copied.v1"):
    disks: list[DiskCopy] = msgspec.field(default_factory=list)
    precopy: int = 0  # warm-migration round (0 for cold)
    volumes: list[Volume] = msgspec.field(default_factory=list)  # as bound after the copy
    checkpoint: str = ""  # warm: the source checkpoint the next round counts from
    changed: int = 0  # warm: bytes the source reported changed in this round


class CleanupVolumes(Command, frozen=True, kw_only=True, tag="volume.cleanup.v1"):
    """Remove temporary volumes; with ``all_volumes`` (failure, cancel) every
    volume this migration created for the VM."""

    namespace: str
    all_volumes: bool = False


class VolumesCleaned(StepEvent, frozen=True, kw_only=True, tag="volume.cleaned.v1"):
    removed: list[str] = msgspec.field(default_factory=list)


class VolumeFailed(Failed, frozen=True, kw_only=True, tag="volume.failed.v1"):
    pass
