"""The console's HTTP side against a real nats-server: the live stream, the token, the views."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ferry.bus import Bus, topology
from ferry.console import access
from ferry.console.app import Console, Settings
from ferry.proto import migration, subjects
from ferry.proto.inventory import ProviderType, Vm
from ferry.proto.subjects import Bucket, Service
from ferry.testing import views

TOKEN = "t0ken-for-the-console-test-0123456789"


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_url, name="test") as connected:
        await topology.declare(connected, services=list(Service))
        yield connected


@pytest.fixture
async def console(bus: Bus, tmp_path: Path) -> AsyncIterator[str]:
    settings = Settings(
        data_dir=tmp_path, http={"host": "127.0.0.1", "port": 0}, console={"keepalive_seconds": 0.5}
    )
    server = Console(settings, access.Token(TOKEN), bus, bus)
    server.declared = True
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


async def sse(
    response: aiohttp.ClientResponse, count: int, within: float = 10
) -> list[dict[str, Any]]:
    """Read ``count`` SSE messages: their id and decoded data."""
    got: list[dict[str, Any]] = []
    current: dict[str, Any] = {}

    async def read() -> None:
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                current["id"] = int(line[4:])
            elif line.startswith("data: "):
                current["data"] = json.loads(line[6:])
            elif line == "" and "data" in current:
                got.append(dict(current))
                current.clear()
                if len(got) == count:
                    return

    await asyncio.wait_for(read(), within)
    return got


async def test_stream_resumes_after_last_event_id_without_loss_or_repeat(
    bus: Bus, console: str
) -> None:
    # Given three progress events in the audit stream
    for done in (1, 2, 3):
        await bus.publish(views.progress("web01", done))
    async with aiohttp.ClientSession() as http:
        # When a page follows from the start and sees them, then a fourth arrives live
        async with http.get(f"{console}/api/events?after=0") as first:
            assert first.headers["Content-Type"] == "text/event-stream"
            seen = await sse(first, 3)
            await bus.publish(views.progress("web01", 4))
            seen += await sse(first, 1)
        # and, while it is away, two more are published
        for done in (5, 6):
            await bus.publish(views.progress("web01", done))
        # When it reconnects with the last id it saw (and a stale ?after=)
        last = seen[-1]["id"]
        async with http.get(
            f"{console}/api/events?after=0", headers={"Last-Event-ID": str(last)}
        ) as again:
            resumed = await sse(again, 2)
    # Then every event came exactly once, in stream order
    ids = [m["id"] for m in seen + resumed]
    assert ids == sorted(set(ids)) and len(ids) == 6
    assert [m["data"]["data"]["done"] for m in seen + resumed] == [1, 2, 3, 4, 5, 6]
    assert [m["data"]["type"] for m in resumed] == ["migration.progress.v1"] * 2


async def test_stream_filters_by_vm(bus: Bus, console: str) -> None:
    # Given events about two VMs
    await bus.publish(views.progress("web01", 1))
    await bus.publish(views.progress("db01", 2))
    await bus.publish(views.progress("web01", 3))
    # When the page asks for one VM only
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{console}/api/events?after=0&vm=db01&migration={views.MIGRATION}") as response,
    ):
        got = await sse(response, 1)
    # Then it gets that VM's events
    assert [m["data"]["data"]["vm"] for m in got] == ["db01"]


async def test_snapshot_shows_plans_migrations_pipeline_and_position(
    bus: Bus, console: str
) -> None:
    # Given a running migration in the views and one event in the stream
    await views.seed(bus)
    await bus.publish(views.progress("web01", 5))
    # When the page reads the snapshot
    async with aiohttp.ClientSession() as http, http.get(f"{console}/api/snapshot") as response:
        snap = await response.json()
    # Then it has the stream position, the plan, and each VM's pipeline and disks
    assert snap["position"] == 1
    assert [p["name"] for p in snap["plans"]] == [views.PLAN]
    assert [p["name"] for p in snap["providers"]] == ["local", "src"]
    assert {v["name"] for v in snap["providers"][1]["inventory"]} == {"db01", "web01"}
    (mig,) = snap["migrations"]
    assert mig["phase"] == "Running"
    web = next(v for v in mig["vms"] if v["vm"] == "web01")
    steps = {s["name"]: s for s in web["steps"]}
    assert steps["StorePowerState"]["seconds"] == 1.0
    assert steps["ConvertGuest"]["attempt"] == 2 and steps["ConvertGuest"]["status"] == "Running"
    assert web["disks"][0]["total"] == 4 * views.GIB
    # And the plan's estimate, sized from the stored states, states its inputs
    estimate = snap["plans"][0]["estimate"]
    assert {v["name"] for v in estimate["vms"]} >= {"web01"}
    assert next(v for v in estimate["vms"] if v["name"] == "web01")["bytes"] > 0
    assert {i["name"] for i in estimate["inputs"]} >= {"throughput", "conversion", "concurrency"}


async def command_count(bus: Bus) -> int:
    info = await bus.js.stream_info(subjects.command_stream(Service.CONTROLLER))
    return int(info.state.messages)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-the-token-at-all-000000"}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Cookie": f"{access.COOKIE}={TOKEN}"}, 401),  # a cookie never authorises a write
    ],
)
async def test_a_write_without_the_token_is_refused_and_changes_nothing(
    bus: Bus, console: str, headers: dict[str, str], status: int
) -> None:
    # Given a running migration
    await views.seed(bus)
    before = await bus.kv(Bucket.OBJECTS, dict).get(
        subjects.object_key("Migration", views.MIGRATION)
    )
    async with aiohttp.ClientSession() as http:
        # When a cancel and a start arrive without a valid token
        cancel = await http.post(
            f"{console}/api/migrations/{views.MIGRATION}/cancel", json={}, headers=headers
        )
        start = await http.post(f"{console}/api/plans/{views.PLAN}/start", headers=headers)
    # Then both are refused and neither the objects nor the command queue changed
    assert (cancel.status, start.status) == (status, status)
    assert cancel.headers["WWW-Authenticate"].startswith("Bearer")
    after = await bus.kv(Bucket.OBJECTS, dict).get(
        subjects.object_key("Migration", views.MIGRATION)
    )
    assert after == before
    assert await bus.kv(Bucket.OBJECTS, dict).keys("migration.") == ["migration.wave1-run"]
    assert await command_count(bus) == 0


async def test_writes_with_the_token_start_cancel_and_cut_over(bus: Bus, console: str) -> None:
    # Given a plan with a running migration
    await views.seed(bus)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        # When a person starts another run, cancels one VM and sets the cutover
        start = await http.post(
            f"{console}/api/plans/{views.PLAN}/start", json={"name": "wave1-b"}, headers=auth
        )
        cancel = await http.post(
            f"{console}/api/migrations/{views.MIGRATION}/cancel", json={"vm": "web01"}, headers=auth
        )
        cut = await http.post(
            f"{console}/api/migrations/{views.MIGRATION}/cutover",
            json={"cutover": "2030-01-01T00:00:00Z"},
            headers=auth,
        )
        again = await http.post(
            f"{console}/api/plans/{views.PLAN}/start", json={"name": "wave1-b"}, headers=auth
        )
    # Then each is accepted, recorded on the Migration and sent to the controller once
    assert (start.status, cancel.status, cut.status, again.status) == (201, 202, 202, 409)
    entry = await bus.kv(Bucket.OBJECTS, dict).get(
        subjects.object_key("Migration", views.MIGRATION)
    )
    assert entry is not None
    assert entry.value["spec"]["cancel"] == [{"name": "web01"}]
    assert entry.value["spec"]["cutover"].startswith("2030-01-01T00:00:00")
    assert await command_count(bus) == 3


async def test_reads_from_loopback_need_no_token(console: str) -> None:
    async with aiohttp.ClientSession() as http:
        page = await http.get(f"{console}/")
        script = await http.get(f"{console}/static/console.js")
        missing = await http.get(f"{console}/static/../app.py")
        body = await page.text()
    assert page.status == 200 and script.status == 200 and missing.status == 404
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    # Everything the page loads comes from the console itself
    assert "http" not in body.replace("http-equiv", "")


async def test_providers_show_the_inventory_the_controller_last_published(
    bus: Bus, console: str
) -> None:
    # Given the views, and the controller's reads of the source: first two VMs, then three
    await views.seed(bus)

    def read(*names: str, error: str = "") -> migration.InventoryRead:
        return migration.InventoryRead(
            plan="", migration="*", vm="src", provider="src", source_type="ova", error=error,
            vms=[Vm(id=f"id-{n}", name=n, provider_type=ProviderType.OVA) for n in names],
        )  # fmt: skip

    async with aiohttp.ClientSession() as http:

        async def providers() -> dict[str, Any]:
            async with http.get(f"{console}/api/snapshot") as r:
                return {p["name"]: p for p in (await r.json())["providers"]}

        # When nothing was read yet, the provider shows only what migrations saw
        before = (await providers())["src"]
        assert before["inventory_read"] == ""
        # When the controller publishes a read, then another with a new VM
        await bus.publish(read("web01", "db01"))
        first = (await providers())["src"]
        await bus.publish(read("web01", "db01", "new01"))
        second = (await providers())["src"]
        # Then each snapshot shows the latest read, with its time
        assert [v["name"] for v in first["inventory"]] == ["web01", "db01"]
        assert [v["name"] for v in second["inventory"]] == ["web01", "db01", "new01"]
        assert second["inventory_read"] and second["inventory_error"] == ""
        # And a source that cannot be read says why
        await bus.publish(read(error="the directory does not exist"))
        broken = (await providers())["src"]
        assert broken["inventory"] == [] and "does not exist" in broken["inventory_error"]
