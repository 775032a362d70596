"""Settings of the local platform, validated with pydantic (they come from people)."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.local.storage import StorageConfig
from ferry.platform.volumes import DEFAULT_FILESYSTEM_OVERHEAD


class LocalSettings(BaseModel):
    """Settings of the local platform (``FERRY_PLATFORM__…``)."""

    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)

    data_dir: Path = Field(description="Where volumes (and VMs) live.")
    storage_classes: dict[str, Path] = Field(
        default_factory=dict,
        description="Directory per storage class; a class not listed lives under data_dir.",
    )
    filesystem_overhead: float = Field(
        default=DEFAULT_FILESYSTEM_OVERHEAD,
        ge=0,
        lt=1,
        description="Share of a Filesystem volume kept for filesystem metadata (CDI: 0.055).",
    )
    check_capacity: bool = Field(
        default=True,
        description="pvcinit refuses to bind when the storage has less free space than the "
        "VM's volumes request. Off = thin provisioning (the copy may then hit ENOSPC).",
    )
    copy_workers: int = Field(default=2, ge=1, le=64, description="Copy threads per disk.")
    checkpoint_seconds: float = Field(
        default=10.0, gt=0, description="A transfer commits a resumable checkpoint this often."
    )
    verify_readback: bool = Field(
        default=True,
        description="Read every written range back from the device (O_DIRECT where the "
        "filesystem allows) and compare it byte for byte with the hashed source buffer before "
        "it counts as copied. Off: the target checksum is taken from the written buffers "
        "(faster, weaker).",
    )
    max_rate: float | None = Field(
        default=None, gt=0, description="Cap on a transfer's bytes per second; none = unlimited."
    )
    python: str = Field(
        default=sys.executable, description="Interpreter that runs the workload processes."
    )

    def storage_config(self) -> StorageConfig:
        return StorageConfig(
            data_dir=str(self.data_dir),
            storage_classes={k: str(v) for k, v in self.storage_classes.items()},
            filesystem_overhead=self.filesystem_overhead,
            check_capacity=self.check_capacity,
            copy_workers=self.copy_workers,
            checkpoint_seconds=self.checkpoint_seconds,
            verify_readback=self.verify_readback,
            max_rate=self.max_rate,
        )
