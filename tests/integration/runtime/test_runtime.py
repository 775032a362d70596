"""The runtime in-process against a real nats-server: readiness follows the bus, the
router's outcomes show up in /metrics, and the stop event drains cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ferry.bus import Bus, Context, Router
from ferry.proto import subjects, vm
from ferry.proto.subjects import Service
from ferry.runtime import Runtime, ServiceSettings
from ferry.runtime.lifecycle import Stopped


def _settings(url: str, **overrides: Any) -> ServiceSettings:
    return ServiceSettings(
        nats={"url": url},
        http={"host": "127.0.0.1", "port": 0},
        workers={"concurrency": 2, "grace_seconds": 5},
        bus={"ack_wait_seconds": 5},
        **overrides,
    )


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def _eventually_ready(base: str, timeout: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as response:
                body: dict[str, Any] = await response.json()
                if response.status == 200:
                    return body
            await asyncio.sleep(0.05)


def _power_off() -> vm.PowerOff:
    return vm.PowerOff(plan="p1", migration="m1", vm="vm-1", namespace="ns", target_name="web")


@contextlib.asynccontextmanager
async def _running(runtime: Runtime, router: Router) -> AsyncIterator[asyncio.Task[None]]:
    async with runtime:
        task = asyncio.create_task(runtime.run(router))
        try:
            yield task
        finally:
            runtime.stop.set()
            await asyncio.wait_for(task, timeout=30)


async def test_ready_only_when_connected_and_metrics_count_handled_messages(nats_server) -> None:
    # Given a vm-service runtime whose router handles PowerOff
    router = Router(Service.VM)
    seen: list[str] = []

    @router.handler(vm.PowerOff)
    async def power_off(cmd: vm.PowerOff, ctx: Context) -> vm.VmStopped:
        seen.append(cmd.target_name)
        return vm.VmStopped(plan=cmd.plan, migration=cmd.migration, vm=cmd.vm, name=cmd.target_name)

    runtime = Runtime(
        Service.VM, _settings(nats_server.url), install_signals=False, configure_logging=False
    )
    async with _running(runtime, router):
        base = f"http://127.0.0.1:{runtime.health.port}"

        # When it is up
        ready = await _eventually_ready(base)

        # Then every readiness check holds, and liveness answers
        assert ready["checks"] == {
            "bus_connected": True,
            "topology_declared": True,
            "router_running": True,
        }
        assert (await _get(f"{base}/healthz"))[0] == 200

        # When a PowerOff command is published
        async with await Bus.connect(nats_server.url, name="test") as client:
            await client.publish(_power_off())
            events = client.events(
                subject=subjects.events_of(Service.VM, "m1"), since=None, follow=True
            )
            async with asyncio.timeout(20):
                async for _env, event in events:
                    if isinstance(event, vm.VmStopped):
                        break

        # Then the handler ran once and /metrics counts it
        assert seen == ["web"]
        status, text = await _get(f"{base}/metrics")
        assert status == 200
        assert (
            'ferry_messages_handled_total{service="vm-service",type="vm.power_off.v1"} 1.0' in text
        )
        assert (
            'ferry_handler_duration_seconds_count{service="vm-service",type="vm.power_off.v1"} 1.0'
            in text
        )
        assert 'ferry_in_flight{service="vm-service"} 0.0' in text

    # And after the stop event the router has stopped
    assert runtime.readiness.report()["router_running"] is False


async def test_alive_but_not_ready_while_nats_is_unreachable() -> None:
    # Given a port where no nats-server listens
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    runtime = Runtime(
        Service.VOLUME,
        _settings(f"nats://127.0.0.1:{dead_port}"),
        install_signals=False,
        configure_logging=False,
    )

    # When the runtime starts (it keeps trying to connect)
    entering = asyncio.create_task(runtime.__aenter__())
    async with asyncio.timeout(10):
        while runtime.health.port == 0:
            await asyncio.sleep(0.02)
    base = f"http://127.0.0.1:{runtime.health.port}"
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                health = await _get(f"{base}/healthz")
                break
            await asyncio.sleep(0.02)
    ready_status, ready_body = await _get(f"{base}/readyz")

    # Then it is alive but not ready, and says why
    assert health[0] == 200
    assert ready_status == 503
    assert '"bus_connected": false' in ready_body

    # When it is told to stop before the bus ever connected
    runtime.stop.set()

    # Then start-up ends quietly and the HTTP server is gone
    with pytest.raises(Stopped):
        await asyncio.wait_for(entering, timeout=10)
    with pytest.raises(aiohttp.ClientError):
        await _get(f"{base}/healthz")


async def test_a_routers_http_routes_are_served_beside_the_probes(nats_server) -> None:
    # Given a volume-service router that brings a route of its platform's (as the
    # kubernetes platform's grant broker), added after the server started
    router = Router(Service.VOLUME)

    async def grants(request: web.Request) -> web.Response:
        return web.json_response({"granted": (await request.json())["bytes"]})

    router.http_routes.append(web.post("/pace/grants", grants))
    runtime = Runtime(
        Service.VOLUME, _settings(nats_server.url), install_signals=False, configure_logging=False
    )
    async with _running(runtime, router):
        base = f"http://127.0.0.1:{runtime.health.port}"
        await _eventually_ready(base)

        # When the route is asked, and asked with another method, and another path
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/pace/grants", json={"bytes": 7}) as response:
                posted = response.status, await response.json()
            async with http.get(f"{base}/pace/grants") as response:
                wrong_method = response.status
            async with http.post(f"{base}/pace/other", json={}) as response:
                unknown = response.status

        # Then the route answers, the others are 405 and 404, and the probes still work
        assert posted == (200, {"granted": 7})
        assert (wrong_method, unknown) == (405, 404)
        assert (await _get(f"{base}/healthz"))[0] == 200
