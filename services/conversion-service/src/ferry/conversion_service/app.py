"""The conversion-service's router, as the runtime asks for it (``build_router``)."""

from __future__ import annotations

from ferry.bus import Bus, Router
from ferry.conversion_service import handlers
from ferry.conversion_service.settings import Settings
from ferry.proto.subjects import Service


def build_router(bus: Bus, settings: Settings) -> Router:
    """One handler, ConvertGuest; per-replica concurrency comes from ``settings.workers``."""
    router = Router(Service.CONVERSION)
    handlers.register(router, settings)
    return router
