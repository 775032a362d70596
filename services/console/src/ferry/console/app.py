"""The console process: one HTTP server for the page, its API, its live stream and probes.

The console is a fifth process rather than a part of a service because it has
a different shape from all four: it handles no command and owns no state, it
holds long-lived browser connections, and it answers people rather than the
bus. Putting it in the controller would make the one active controller replica
also the web server (and restart every browser's stream whenever the
controller restarts); putting it anywhere else would give a worker two jobs.
Its own process can be restarted, scaled or left out without touching a
migration.

It reads only the audit stream and the KV views. Those reads go through
``reader``, a connection that issue 19 turns into a read-only NATS identity
(``FERRY_CONSOLE__READER_URL``); the three writes go through ``writer``, the
service identity, and only after ``access`` has checked the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from importlib import resources
from typing import Any

from aiohttp import web

from ferry.bus import Bus
from ferry.bus.dial import redact
from ferry.console import access, actions, gauges, probes, stream, views
from ferry.console.settings import Settings
from ferry.runtime import logs
from ferry.runtime.health import HealthServer, Readiness
from ferry.runtime.metrics import Metrics
from ferry.runtime.providers import OpenProvider, Providers

__all__ = ["Console", "Settings", "serve"]

log = logging.getLogger("ferry.console")

NAME = "console"
REFRESH_SECONDS = 15.0
STATIC = ("index.html", "console.js", "console.css")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


class Console(HealthServer):
    """The probes of every service, plus the page, its API and its event stream."""

    def __init__(
        self,
        settings: Settings,
        token: access.Token,
        reader: Bus,
        writer: Bus,
        *,
        metrics: Metrics | None = None,
        readiness: Readiness | None = None,
        open_source: OpenProvider | None = None,
    ) -> None:
        ready = readiness or Readiness()
        ready.add("bus_connected", lambda: reader.connected and writer.connected)
        ready.add("views_declared", lambda: self.declared)
        self.declared = False
        super().__init__(
            NAME,
            metrics or Metrics(NAME),
            ready,
            host=settings.http.host,
            port=settings.http.port,
            loop_stall_seconds=settings.http.loop_stall_seconds,
        )
        self.settings = settings
        self.token = token
        self.reader = reader
        self.writer = writer
        self._streams: set[asyncio.Task[Any]] = set()
        self.views = gauges.Views(self.metrics.registry)
        self.inventories = views.Inventories()
        # A pair with no history: its plans' throughput from a short read of the source,
        # opened from its Provider object without credentials (the console holds none).
        self.probes = probes.Probes(
            open_source or Providers(reader, probes.NoSecrets()).open,
            seconds=settings.console.estimate_probe_seconds,
            keep=settings.console.probe_cache_seconds,
        )

    def app(self) -> web.Application:
        app = super().app()
        app.middlewares.append(access.middleware(self.token))
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/snapshot", self._snapshot)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/api/plans/{plan}/estimate", self._plan_estimate)
        app.router.add_post("/api/session", self._session)
        app.router.add_post("/api/plans/{plan}/start", self._start)
        app.router.add_post("/api/migrations/{name}/cancel", self._cancel)
        app.router.add_post("/api/migrations/{name}/cutover", self._cutover)
        app.on_startup.append(self._start_refresh)
        app.on_shutdown.append(self._close_streams)
        return app

    async def _start_refresh(self, _: web.Application) -> None:
        self._streams.add(asyncio.create_task(self._refresh()))

    async def _refresh(self) -> None:
        # Scrapes are synchronous: the gauges show the last reading, renewed here.
        while True:
            if not self.declared:  # the buckets may not exist yet: nothing to read
                await asyncio.sleep(0.5)
                continue
            try:
                await self._read_views()
            except Exception as bad:  # a bus hiccup must not end the refresh loop
                log.warning("metrics views not refreshed: %s", bad)
            await asyncio.sleep(REFRESH_SECONDS)

    async def _read_views(self) -> None:
        self.views.update(
            await views.vm_states(self.reader), migrations=await views.migrations(self.reader)
        )

    # -- reads ---------------------------------------------------------------------

    async def _page(self, _: web.Request) -> web.Response:
        return _file("index.html")

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return _file(name)

    async def _snapshot(self, _: web.Request) -> web.Response:
        body = await views.snapshot(self.reader, self.inventories, self.probes)
        await self._read_views()
        body["event_log"] = self.settings.console.event_log
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _plan_estimate(self, request: web.Request) -> web.Response:
        """A plan's estimate once its pair's probe (if it needs one) has read the source:
        the page asks for it when the snapshot says ``probing``."""
        plan = request.match_info["plan"]
        body = await views.plan_estimate(self.reader, plan, self.probes, self.inventories)
        if body is None:
            raise web.HTTPNotFound(text="no such plan")
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            return await stream.serve(request, self.reader, self.settings.console.keepalive_seconds)
        finally:
            self._streams.discard(task)

    async def _close_streams(self, _: web.Application) -> None:
        # Open event streams never end by themselves; without this, shutdown would wait.
        for task in list(self._streams):
            task.cancel()
        await self.probes.close()

    # -- writes (the middleware has checked the token) -----------------------------

    async def _session(self, request: web.Request) -> web.Response:
        response = web.json_response({"ok": True})
        response.set_cookie(
            access.COOKIE,
            self.token.reveal(),
            httponly=True,
            samesite="Strict",
            secure=request.secure,
            path="/",
        )
        return response

    async def _start(self, request: web.Request) -> web.Response:
        body = await _body(request)
        plan = request.match_info["plan"]
        name = await _act(actions.start(self.writer, plan, body.get("name"), body.get("cutover")))
        log.info("migration %s of plan %s started from the console", name, plan)
        return web.json_response({"migration": name}, status=201)

    async def _cancel(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = request.match_info["name"]
        vm = body.get("vm") or None
        await _act(actions.cancel(self.writer, name, vm))
        log.info("cancel of %s requested from the console", name, extra={"vm": vm or "*"})
        return web.json_response({"migration": name, "vm": vm or "*"}, status=202)

    async def _cutover(self, request: web.Request) -> web.Response:
        body = await _body(request)
        name = request.match_info["name"]
        if not body.get("cutover"):
            raise web.HTTPBadRequest(text='give the cutover time: {"cutover": "…"}\n')
        at = await _act(actions.cutover(self.writer, name, str(body["cutover"])))
        log.info("cutover of %s set to %s from the console", name, at)
        return web.json_response({"migration": name, "cutover": at}, status=202)


def _file(name: str) -> web.Response:
    data = resources.files("ferry.console").joinpath("static", name).read_bytes()
    kind = TYPES[name[name.rfind(".") :]]
    return web.Response(
        body=data,
        content_type=kind,
        charset="utf-8",
        headers={
            # Everything the page needs is served from here: say so to the browser too.
            "Content-Security-Policy": "default-src 'self'; object-src 'none'; "
            "frame-ancestors 'none'; base-uri 'none'",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text="the body must be a JSON object\n") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object\n")
    return body


async def _act(work: Any) -> Any:
    try:
        return await work
    except actions.ActionError as bad:
        raise _http(bad) from None


def _http(bad: actions.ActionError) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {
        404: web.HTTPNotFound,
        409: web.HTTPConflict,
    }
    return kinds.get(bad.status, web.HTTPBadRequest)(text=f"{bad}\n")


async def _wait_for_views(console: Console, stop: asyncio.Event) -> None:
    """Ready once the services have declared the stream and buckets (``ferry up`` starts
    everyone at once; the console may well be first)."""
    while not stop.is_set():
        if await views.declared(console.reader):
            console.declared = True
            return
        log.info("waiting for the services to declare the audit stream and the views")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def serve(settings: Settings) -> int:
    """Run the console until SIGTERM or SIGINT; the process exit code."""
    logs.configure(NAME, settings.log.level, settings.log.format)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def signalled(sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signalled, sig)
    try:
        token = access.Token.load_or_create(settings.token_path())
    except (OSError, ValueError) as bad:
        # The chart's Secret holds an empty token until console.token is set at install.
        log.error("console token in %s unusable: %s", settings.token_path(), bad)
        return 2
    async with contextlib.AsyncExitStack() as stack:
        try:
            writer = await stack.enter_async_context(
                await Bus.connect(
                    settings.nats.url,
                    name=NAME,
                    settings=settings.bus.topology(),
                    credentials=settings.nats.credentials(),
                    tls=settings.nats.tls(),
                )
            )
            reader = writer
            if settings.console.reader_url:
                reader = await stack.enter_async_context(
                    await Bus.connect(settings.console.reader_url, name=f"{NAME}-reader")
                )
        except Exception:
            log.exception("console could not reach NATS at %s", redact(settings.nats.url))
            return 1
        console = Console(settings, token, reader, writer)
        await console.start()
        stack.push_async_callback(console.stop)
        waiting = asyncio.create_task(_wait_for_views(console, stop))
        stack.callback(waiting.cancel)
        log.info(
            "console on http://%s:%d/ (token in %s), nats at %s",
            settings.http.host,
            console.port,
            settings.token_path(),
            redact(settings.nats.url),
        )
        await stop.wait()
    log.info("%s stopped", NAME)
    return 0
