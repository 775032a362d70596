"""The volume-service's settings: the shared service settings, the ``platform``
group every platform-using service shares (:mod:`ferry.platform.settings`), and
a ``volumes`` group of its own, read from ``FERRY_…`` variables
(``FERRY_VOLUMES__PROGRESS_INTERVAL_SECONDS``).

Where target disks live and how a transfer runs (storage root, copy threads,
checkpoints, read-back) belong to the platform and are set under
``FERRY_PLATFORM__LOCAL__…``; where provider secrets are mounted is the
``providers`` group every provider-opening service shares
(``FERRY_PROVIDERS__SECRETS_DIR``). The ``volumes`` group keeps what is the
service's own: how many disks of a VM move at once, how often progress reaches
the bus.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.settings import PlatformSettings
from ferry.runtime.providers import ProvidersSettings
from ferry.runtime.settings import ServiceSettings


class VolumeSettings(BaseModel):
    """How hard one replica drives its transfers."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    progress_interval_seconds: float = Field(
        default=1.0,
        ge=0.2,
        description="Minimum time between two DiskProgress events of one disk; the start and "
        "the end of a copy are always reported.",
    )
    disks_in_parallel: int = Field(
        default=1,
        ge=1,
        le=32,
        description="Disks of one VM copied at the same time (each in its own workload).",
    )
    warm_final_verify: bool = Field(
        default=True,
        description="At a warm cutover, also hash the whole source and target disks and "
        "compare them (catches a change the source failed to track) before the VM is "
        "created; costs a full read of both disks inside the downtime.",
    )


class Settings(ServiceSettings):
    """Everything the volume-service reads at start-up."""

    platform: PlatformSettings = Field(
        default_factory=PlatformSettings, description=PlatformSettings.__doc__
    )
    providers: ProvidersSettings = Field(
        default_factory=ProvidersSettings, description=ProvidersSettings.__doc__
    )
    volumes: VolumeSettings = Field(
        default_factory=VolumeSettings, description=VolumeSettings.__doc__
    )

    def secrets_dir(self) -> Path:
        return self.providers.root(self.data_dir)
