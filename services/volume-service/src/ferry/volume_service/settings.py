"""The volume-service's settings: the shared service settings plus a ``volumes``
group, read from ``FERRY_…`` variables (``FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS``).

The group holds what decides where target disks live and how hard one replica
pushes its storage: the local platform's storage root and per-class
directories, how many disks of a VM are copied at once and with how many
threads each, and how often progress reaches the bus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.volumes import DEFAULT_FILESYSTEM_OVERHEAD
from ferry.runtime.settings import ServiceSettings


class VolumeSettings(BaseModel):
    """Where target volumes live and how transfers run on this replica."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    storage_root: Path | None = Field(
        default=None,
        description="Root of the local platform's volumes (claims, volumes, checkpoints). "
        "Unset: <data_dir>/storage. Every replica on one host must use the same root.",
    )
    storage_classes: dict[str, Path] = Field(
        default_factory=dict,
        description="Directory per storage class (JSON object: class → path); a class not "
        "listed lives under the storage root.",
    )
    filesystem_overhead: float = Field(
        default=DEFAULT_FILESYSTEM_OVERHEAD,
        ge=0,
        lt=1,
        description="Share of a Filesystem-mode volume kept for filesystem metadata (CDI: 0.055).",
    )
    check_capacity: bool = Field(
        default=True,
        description="pvcinit refuses to bind when the storage has less free space than the "
        "VM's volumes request. Off: thin provisioning (a copy may then fail with ENOSPC).",
    )
    progress_interval_seconds: float = Field(
        default=1.0,
        ge=0.2,
        description="Minimum time between two DiskProgress events of one disk; the start and "
        "the end of a copy are always reported.",
    )
    copy_workers: int = Field(
        default=4, ge=1, le=64, description="Threads that copy ranges of one disk in parallel."
    )
    disks_in_parallel: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Disks of one VM copied at the same time (each in its own workload).",
    )
    checkpoint_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A transfer commits a resumable checkpoint this often; a killed copy "
        "restarts from its last checkpoint.",
    )
    verify_readback: bool = Field(
        default=True,
        description="Read every written range back from the volume (from the device where "
        "it takes direct I/O) and compare it with the source bytes before it counts as "
        "copied; after the flush, check that the source's holes read as zeros. Off: the "
        "target checksum comes from the written buffers (faster where the device is the "
        "bottleneck, weaker).",
    )
    max_rate: float | None = Field(
        default=None,
        gt=0,
        description="Cap on one disk transfer, in bytes per second of data; unset: unlimited.",
    )
    secrets_dir: Path | None = Field(
        default=None,
        description="Where provider secrets are mounted: <secrets_dir>/<namespace>/<name>/<key>, "
        "one file per key (the layout of a Kubernetes Secret volume). Unset: "
        "<data_dir>/secrets. Values are never logged.",
    )


class Settings(ServiceSettings):
    """Everything the volume-service reads at start-up."""

    platform: Literal["local", "kubernetes"] = Field(
        default="local",
        description="Target platform: local (volumes are files, workloads child processes) "
        "or kubernetes (DataVolumes, PVCs and populators through CDI).",
    )
    volumes: VolumeSettings = Field(
        default_factory=VolumeSettings, description=VolumeSettings.__doc__
    )

    def storage_root(self) -> Path:
        return self.volumes.storage_root or Path(self.data_dir) / "storage"

    def secrets_dir(self) -> Path:
        return self.volumes.secrets_dir or Path(self.data_dir) / "secrets"

    def platform_settings(self) -> dict[str, Any]:
        """What the platform factory gets: the local platform's settings, by name."""
        v = self.volumes
        return {
            "data_dir": self.storage_root(),
            "storage_classes": dict(v.storage_classes),
            "filesystem_overhead": v.filesystem_overhead,
            "check_capacity": v.check_capacity,
            "copy_workers": v.copy_workers,
            "checkpoint_seconds": v.checkpoint_seconds,
            "verify_readback": v.verify_readback,
            "max_rate": v.max_rate,
        }
