"""One ``async with`` for a service's life: logs, probes, signals, bus, topology, router.

Order matters and is kept in one place. The health server starts first so that
liveness answers while NATS is still being reached; readiness turns true only
once the bus is connected, the topology declared and the router's task running
(and turns false again when the connection drops). On
SIGTERM or SIGINT the stop event is set: the router stops fetching, lets
in-flight handlers finish (or hands their messages back) within the grace
period and drains; then the bus closes and the server stops. A clean stop exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from pydantic import ValidationError
from pydantic_settings import SettingsError

from ferry.bus import Bus, Observer, topology
from ferry.bus.dial import redact
from ferry.bus.ledger import Ledger
from ferry.proto.subjects import Service
from ferry.runtime import logs
from ferry.runtime.health import HealthServer, Readiness
from ferry.runtime.metrics import Metrics
from ferry.runtime.settings import ServiceSettings
from ferry.runtime.stack import services

if TYPE_CHECKING:
    from aiohttp.web import RouteDef
    from prometheus_client.registry import Collector

log = logging.getLogger("ferry.runtime")

S = TypeVar("S", bound=ServiceSettings)


class Runnable(Protocol):
    """What a service runs: a :class:`ferry.bus.Router`, or anything that runs like one
    (the controller combines two routers with a scheduler behind the same signature)."""

    async def run(
        self,
        bus: Bus,
        concurrency: int = ...,
        stop: asyncio.Event | None = ...,
        grace_seconds: float = ...,
        observer: Observer | None = ...,
    ) -> None: ...


BuildRouter = Callable[[Bus, S], Runnable | Awaitable[Runnable]]
"""A service's own function: given the connected bus and its settings, what to run."""


def process_name(service: Service) -> str:
    """The name a service goes by in logs, metrics and envelope sources."""
    return services.of(service).name


class Runtime:
    """The running service around its router.

    ``async with Runtime(service, settings) as rt`` sets up logging, the health
    server and signal handling, connects the bus and declares the service's part
    of the topology; ``await rt.run(router)`` runs the router until signalled.
    """

    def __init__(
        self,
        service: Service,
        settings: ServiceSettings,
        *,
        install_signals: bool = True,
        configure_logging: bool = True,
    ) -> None:
        self.service = service
        self.settings = settings
        self.name = process_name(service)
        self.stop = asyncio.Event()
        self.metrics = Metrics(self.name)
        self.readiness = Readiness()
        self.health = HealthServer(
            self.name,
            self.metrics,
            self.readiness,
            host=settings.http.host,
            port=settings.http.port,
            loop_stall_seconds=settings.http.loop_stall_seconds,
        )
        self._install_signals = install_signals
        self._configure_logging = configure_logging
        self._bus: Bus | None = None
        self._declared = False
        self._router_running = False
        self._stack = contextlib.AsyncExitStack()
        self.readiness.add("bus_connected", lambda: self._bus is not None and self._bus.connected)
        self.readiness.add("topology_declared", lambda: self._declared)
        self.readiness.add("router_running", lambda: self._router_running)

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("the runtime is not connected yet")
        return self._bus

    async def __aenter__(self) -> Runtime:
        if self._configure_logging:
            logs.configure(self.name, self.settings.log.level, self.settings.log.format)
        try:
            if self._install_signals:
                self._handle_signals()
            await self.health.start()
            self._stack.push_async_callback(self.health.stop)
            log.info(
                "starting %s: http on %s:%d, nats at %s",
                self.name,
                self.settings.http.host,
                self.health.port,
                redact(self.settings.nats.url),
            )
            self._bus = await self._connect()
            await topology.declare(self._bus, self.settings.bus.topology(), [self.service])
            self._declared = True
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._router_running = False
        await self._stack.aclose()
        log.info("%s stopped", self.name)

    async def _connect(self) -> Bus:
        connecting = asyncio.ensure_future(
            Bus.connect(
                self.settings.nats.url,
                name=self.name,
                settings=self.settings.bus.topology(),
                credentials=self.settings.nats.credentials(),
                tls=self.settings.nats.tls(),
                publish_timeout=self.settings.bus.publish_timeout_seconds,
            )
        )
        stopping = asyncio.ensure_future(self.stop.wait())
        done, _ = await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if connecting not in done:
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
            raise Stopped("signalled before the bus connected")
        bus = connecting.result()
        if self.settings.bus.ledger_dir is not None:
            bus.ledger = Ledger(self.settings.bus.ledger_dir, self.name)
        return await self._stack.enter_async_context(bus)

    async def run(self, router: Runnable) -> None:
        """Run the router until the stop event is set, then let it drain."""
        self._router_running = True
        for collector in getattr(router, "collectors", ()):
            self.metrics.registry.register(cast("Collector", collector))
        self.health.mount(cast("list[RouteDef]", list(getattr(router, "http_routes", ()))))
        log.info("%s ready", self.name)
        try:
            await router.run(
                self.bus,
                concurrency=self.settings.workers.concurrency,
                stop=self.stop,
                grace_seconds=self.settings.workers.grace_seconds,
                observer=self.metrics,
            )
        finally:
            self._router_running = False

    def _handle_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, sig)
            self._stack.callback(loop.remove_signal_handler, sig)

    def _signalled(self, sig: signal.Signals) -> None:
        if self.stop.is_set():
            log.warning("%s received again; still draining", sig.name)
            return
        log.info("%s received: stopping", sig.name)
        self.stop.set()


class Stopped(Exception):
    """The service was told to stop before it was up; not an error."""


async def serve(
    service: Service,
    settings: S,
    build_router: BuildRouter[S],
) -> int:
    """Run a service until signalled; the process exit code."""
    try:
        async with Runtime(service, settings) as runtime:
            built = build_router(runtime.bus, settings)
            router = await built if inspect.isawaitable(built) else built
            await runtime.run(router)
    except Stopped:
        return 0
    except Exception:
        log.exception("%s failed", process_name(service))
        return 1
    return 0


def load_settings(cls: type[S]) -> S:
    """Read a service's settings from the environment, or exit 2 naming what is wrong."""
    try:
        return cls()
    except ValidationError as bad:
        count = len(bad.errors())
        lines = [f"invalid settings ({count} {'error' if count == 1 else 'errors'}):"]
        for error in bad.errors():
            where = "FERRY_" + "__".join(str(p).upper() for p in error["loc"])
            lines.append(f"  {where}: {error['msg']}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    except SettingsError as bad:
        # A group given as one variable (FERRY_PLATFORM=kubernetes) must be JSON;
        # pydantic-settings names only the field, so spell out the variable and the fix.
        field = re.search(r'field "([^"]+)"', str(bad))
        where = f"FERRY_{field.group(1).upper()}" if field else "a FERRY_ variable"
        print(
            f"invalid settings (1 error):\n  {where}: is a settings group; set its fields "
            f"one by one ({where}__<FIELD>) or give it as a JSON object",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def run_service(
    service: Service,
    settings: S,
    build_router: BuildRouter[S],
) -> None:
    """The body of every service's ``main()``: run, then exit with the outcome."""
    sys.exit(asyncio.run(serve(service, settings, build_router)))
