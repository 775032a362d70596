"""The vm-service's router, as the runtime asks for it (``build_router``).

It builds the VirtualMachine from the inventory, the conversion's inspection and
the plan's maps (``ferry.platform.kubevirt``), creates it on the target platform,
powers it on and watches it boot. The platform comes from the factory, configured
by the shared ``platform`` settings group; on the local platform the
VirtualMachine is a manifest on disk plus a QEMU process. Tests may hand in
their own platform.
"""

from __future__ import annotations

from ferry.bus import Bus, Router
from ferry.platform import factory
from ferry.platform.vms import VmPlatform
from ferry.proto.subjects import Service
from ferry.vm_service.handlers import VmHandlers
from ferry.vm_service.settings import Settings, VmSettings

__all__ = ["Settings", "VmSettings", "build_router"]


def build_router(bus: Bus, settings: Settings, *, platform: VmPlatform | None = None) -> Router:
    """CreateVm, PowerOn, PowerOff and DeleteVm on one router."""
    if platform is None:
        platform = factory.create(settings.platform, data_dir=settings.data_dir)
    router = Router(Service.VM)
    VmHandlers(platform, settings.vms).register(router)
    return router
