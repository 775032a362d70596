"""The vm-service's router: the KubeVirt VirtualMachine of each migrated VM.

It builds the VirtualMachine from the inventory, the conversion's inspection and
the plan's maps (``ferry.platform.kubevirt``), creates it on the target platform,
powers it on and watches it boot. The platform is picked by name from the
settings; on the local platform the VirtualMachine is a manifest on disk plus a
QEMU process.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ferry.bus import Bus, Router
from ferry.platform import factory
from ferry.proto.subjects import Service
from ferry.runtime.settings import ServiceSettings
from ferry.vm_service import handlers


class Settings(ServiceSettings):
    """Everything the vm-service reads at start-up."""

    max_boot_seconds: float | None = Field(
        default=None,
        description="Upper bound on how long a VM may take to boot before PowerOn fails, "
        "whatever the command asks for (unset: the command's own limit).",
    )
    qemu: dict[str, Any] = Field(
        default_factory=dict,
        description="Local platform: how VMs run under QEMU (accel, memory overrides…).",
    )


def build_router(bus: Bus, settings: Settings) -> Router:
    router = Router(Service.VM)
    platform = factory.create(
        settings.platform, {"data_dir": settings.data_dir, "qemu": settings.qemu}
    )
    handlers.register(
        router, platform, handlers.HandlerSettings(max_boot_seconds=settings.max_boot_seconds)
    )
    return router
