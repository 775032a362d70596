"""The per-service HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

Liveness and readiness answer different questions. ``/healthz`` says the process
is alive and its event loop still turns (a heartbeat task ticks every second; if
it stalls, something blocks the loop and a restart is the cure). ``/readyz`` says
the service can do its job: connected to NATS, topology declared, router running.
A probe that conflated the two would restart a healthy pod whenever NATS blips.

A service may serve routes of its own on the same port (:meth:`HealthServer.mount`:
the volume-service's grant broker on the kubernetes platform). The server starts
before the service's router exists, and a started aiohttp app takes no new routes,
so mounted ones are looked up by method and path behind one catch-all route.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from ferry.bus.tasks import cancel_and_wait
from ferry.runtime.metrics import CONTENT_TYPE, Metrics

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Check = Callable[[], bool]
"""A readiness condition: cheap, synchronous, no I/O."""

HEARTBEAT_SECONDS = 1.0


class Readiness:
    """Named readiness conditions; ready when all of them hold."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def report(self) -> dict[str, bool]:
        return {name: _safe(check) for name, check in self._checks.items()}

    def ready(self) -> bool:
        report = self.report()
        return bool(report) and all(report.values())


def _safe(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


class HealthServer:
    """An aiohttp server for probes and scrapes, started before anything else."""

    def __init__(
        self,
        service: str,
        metrics: Metrics,
        readiness: Readiness,
        *,
        host: str,
        port: int,
        loop_stall_seconds: float = 10.0,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.readiness = readiness
        self.host = host
        self.port = port
        self.loop_stall_seconds = loop_stall_seconds
        self._last_tick = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._mounted: dict[tuple[str, str], Handler] = {}

    def app(self) -> web.Application:
        # Mounted routes are looked up before the app's own routing, by a middleware: a
        # catch-all route would shadow the routes a subclass adds (the console's pages).
        @web.middleware
        async def mounted_first(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self._dispatch(request, handler)

        app = web.Application(middlewares=[mounted_first])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    def mount(self, routes: Iterable[web.RouteDef]) -> None:
        """Serve ``routes`` too (exact paths), even after the server started."""
        for route in routes:
            if route.path in {"/metrics", "/healthz", "/readyz"}:
                raise ValueError(f"{route.path} is the health server's own route")
            self._mounted[(route.method.upper(), route.path)] = route.handler

    async def _dispatch(self, request: web.Request, routed: Handler) -> web.StreamResponse:
        handler = self._mounted.get((request.method, request.path))
        if handler is not None:
            return await handler(request)
        if any(path == request.path for _, path in self._mounted):
            raise web.HTTPMethodNotAllowed(
                request.method, [m for m, p in self._mounted if p == request.path]
            )
        return await routed(request)  # the app's own routes (404 when none matches)

    async def start(self) -> None:
        self._heartbeat = asyncio.create_task(self._beat(), name="ferry-heartbeat")
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:  # asked the kernel for a port: report the one it gave
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._heartbeat is not None:
            await cancel_and_wait(self._heartbeat)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _beat(self) -> None:
        while True:
            self._last_tick = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    def loop_lag(self) -> float:
        """Seconds since the heartbeat last ran, beyond its own interval."""
        return max(0.0, time.monotonic() - self._last_tick - HEARTBEAT_SECONDS)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = self.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, _: web.Request) -> web.Response:
        lag = self.loop_lag()
        alive = lag < self.loop_stall_seconds and (
            self._heartbeat is not None and not self._heartbeat.done()
        )
        return web.json_response(
            {"service": self.service, "alive": alive, "loop_lag_seconds": round(lag, 3)},
            status=200 if alive else 503,
        )

    async def _readyz(self, _: web.Request) -> web.Response:
        report = self.readiness.report()
        ready = bool(report) and all(report.values())
        return web.json_response(
            {"service": self.service, "ready": ready, "checks": report},
            status=200 if ready else 503,
        )
