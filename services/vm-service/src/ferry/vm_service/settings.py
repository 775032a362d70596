"""The vm-service's settings: the shared service settings, the ``platform`` group
every platform-using service shares (:mod:`ferry.platform.settings`), and a
``vms`` group of its own (``FERRY_VMS__MAX_BOOT_SECONDS``).

The service never opens a source, so it has no ``providers`` group.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ferry.platform.settings import PlatformSettings
from ferry.runtime.settings import ServiceSettings


class VmSettings(BaseModel):
    """Limits the handlers apply on top of what each command asks for."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_boot_seconds: float | None = Field(
        default=None,
        description="Upper bound on how long a VM may take to boot before PowerOn fails, "
        "whatever the command asks for (unset: the command's own limit).",
    )


class Settings(ServiceSettings):
    """Everything the vm-service reads at start-up."""

    platform: PlatformSettings = Field(
        default_factory=PlatformSettings, description=PlatformSettings.__doc__
    )
    vms: VmSettings = Field(default_factory=VmSettings, description=VmSettings.__doc__)
