"""The per-service HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

Liveness and readiness answer different questions. ``/healthz`` says the process
is alive and its event loop still turns (a heartbeat task ticks every second; if
it stalls, something blocks the loop and a restart is the cure). ``/readyz`` says
the service can do its job: connected to NATS, topology declared, router running.
A probe that conflated the two would restart a healthy pod whenever NATS blips.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from aiohttp import web

from ferry.runtime.metrics import CONTENT_TYPE, Metrics

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

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

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
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
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
