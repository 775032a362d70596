"""The vm-service's router: the KubeVirt VirtualMachine of each migrated VM.

It builds the VirtualMachine from the inventory, the conversion's inspection and
the plan's maps (``ferry.platform.kubevirt``), creates it on the target platform,
powers it on and watches it boot. The platform comes from the factory, configured
by the shared ``platform`` settings group; on the local platform the
VirtualMachine is a manifest on disk plus a QEMU process.
"""

from __future__ import annotations

from pydantic import Field

from ferry.bus import Bus, Router
from ferry.platform import factory
from ferry.platform.settings import PlatformSettings
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
    platform: PlatformSettings = Field(
        default_factory=PlatformSettings, description=PlatformSettings.__doc__
    )


def build_router(bus: Bus, settings: Settings) -> Router:
    router = Router(Service.VM)
    platform = factory.create(settings.platform, data_dir=settings.data_dir)
    handlers.register(
        router, platform, handlers.HandlerSettings(max_boot_seconds=settings.max_boot_seconds)
    )
    return router
