"""The conversion-service's HTTP routes: the grant broker its conversion pods ask."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import nats
import pytest
from aiohttp import web

from ferry.bus import Bus, TopologySettings
from ferry.conversion_service import app


def test_on_kubernetes_the_router_brings_the_grant_brokers_route(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given the kubernetes platform, with the address its conversion pods ask for grants at
    monkeypatch.setenv("FERRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FERRY_PLATFORM__KIND", "kubernetes")
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__HOST", "https://127.0.0.1:1")
    monkeypatch.setenv("FERRY_PLATFORM__KUBERNETES__PACING_URL", "http://10.0.0.7:8080")
    bus = Bus(nats.NATS(), name="routes", settings=TopologySettings(), publish_timeout=1.0)

    # When the service builds its router (no I/O: the platform connects on first use)
    router = app.build_router(bus, app.Settings())

    # Then the router carries the broker's route for the runtime to serve
    routes = [cast("web.RouteDef", r) for r in router.http_routes]
    assert [(r.method, r.path) for r in routes] == [("POST", "/pace/grants")]
    # and on the local platform none (the service feeds its helpers' rate file itself)
    monkeypatch.setenv("FERRY_PLATFORM__KIND", "local")
    assert app.build_router(bus, app.Settings()).http_routes == []
