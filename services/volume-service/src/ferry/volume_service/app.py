"""The volume-service's router, as the runtime asks for it (``build_router``).

The platform comes from the platform factory, configured by the shared
``platform`` settings group (the service never imports an implementation);
providers are opened per command by :class:`ferry.runtime.providers.Providers`,
from the objects bucket and the mounted secrets. Tests may hand in their own
platform or provider lookup. Routes the platform serves (the kubernetes platform's
grant broker, which its pods ask for bandwidth) ride on the router to the runtime's
HTTP server.
"""

from __future__ import annotations

from ferry.bus import Bus, Router
from ferry.platform import base, factory
from ferry.platform.volumes import VolumePlatform
from ferry.proto.subjects import Service
from ferry.runtime.bandwidth import Rates
from ferry.runtime.providers import OpenProvider, Providers
from ferry.volume_service.handlers import VolumeHandlers
from ferry.volume_service.settings import Settings, VolumeSettings

__all__ = ["Settings", "VolumeSettings", "build_router"]


def build_router(
    bus: Bus,
    settings: Settings,
    *,
    platform: VolumePlatform | None = None,
    providers: OpenProvider | None = None,
) -> Router:
    """CreateVolumes, AllocateDisks, CopyDisks and CleanupVolumes on one router."""
    if platform is None:
        platform = factory.create(settings.platform, data_dir=settings.data_dir)
    if providers is None:
        providers = Providers.mounted(bus, settings.providers, settings.data_dir)
    router = Router(Service.VOLUME)
    rates = Rates(bus)
    router.collectors.append(rates.moved)
    # the platform's own routes (kubernetes: the grant broker its transfer pods ask)
    router.http_routes.extend(base.http_routes(platform))
    VolumeHandlers(
        platform, providers, settings.volumes, settings.platform.filesystem_overhead, rates
    ).register(router)
    return router
