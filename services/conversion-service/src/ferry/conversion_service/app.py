"""The conversion-service's router, as the runtime asks for it (``build_router``).

virt-v2v runs as a workload of the configured platform (a child process tree
locally, a conversion pod in a cluster), from the one platform factory; the
source of a full conversion is opened by :class:`ferry.runtime.providers.Providers`,
with the Provider object's secret. The platform's own routes (the kubernetes
platform's grant broker, which conversion pods under a budget ask) are served on the
service's HTTP port. Tests may hand in their own provider lookup or converter.
"""

from __future__ import annotations

from pathlib import Path

from ferry.bus import Bus, Router
from ferry.conversion_service import v2v
from ferry.conversion_service.handlers import ConversionHandlers, ProviderLookup
from ferry.conversion_service.settings import Settings
from ferry.conversion_service.volumes import VolumeRecords
from ferry.platform import base, factory
from ferry.proto.subjects import Service
from ferry.runtime.bandwidth import Rates
from ferry.runtime.providers import Providers

__all__ = ["Settings", "build_router", "make_converter"]


def make_converter(settings: Settings) -> v2v.Converter:
    """The converter of this replica, running virt-v2v on the configured platform."""
    platform = factory.create(settings.platform, data_dir=settings.data_dir)
    return v2v.Converter(settings.conversion, Path(settings.data_dir), platform)


def build_router(
    bus: Bus,
    settings: Settings,
    *,
    providers: ProviderLookup | None = None,
    converter: v2v.Converter | None = None,
    records: VolumeRecords | None = None,
) -> Router:
    """One handler, ConvertGuest; per-replica concurrency comes from ``settings.workers``.

    Volume paths come from ``records`` (by default the configured platform), never
    from the command.
    """
    if converter is None:
        converter = make_converter(settings)
    if records is None:
        records = factory.create(settings.platform, data_dir=settings.data_dir)
    if providers is None:
        providers = Providers.mounted(bus, settings.providers, settings.data_dir)
    router = Router(Service.CONVERSION)
    # (a converter handed in by a test may have no platform)
    router.http_routes.extend(base.http_routes(getattr(converter, "workloads", None)))
    rates = Rates(bus)  # the bandwidth budgets, shared with the volume-service's copies
    router.collectors.append(rates.moved)
    ConversionHandlers(settings.conversion, converter, providers, records, rates).register(router)
    return router
