"""Ferry service runtime: settings, logging, metrics, health, lifecycle.

A service's ``main`` is one line::

    run_service(Service.VOLUME, load_settings(app.Settings), app.build_router)
"""

from ferry.runtime.health import HealthServer, Readiness
from ferry.runtime.lifecycle import Runtime, load_settings, process_name, run_service, serve
from ferry.runtime.metrics import Metrics
from ferry.runtime.settings import ServiceSettings

__all__ = [
    "HealthServer",
    "Metrics",
    "Readiness",
    "Runtime",
    "ServiceSettings",
    "load_settings",
    "process_name",
    "run_service",
    "serve",
]
