"""The plan view's estimate probes a pair with no history, as ``ferry estimate`` does: the
snapshot never waits for it (it says the probe is under way), the plan's own estimate
request does, and the result is kept per pair (one read of the source for many pages)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ferry.bus import Bus, topology
from ferry.console import access
from ferry.console.app import Console, Settings
from ferry.console.probes import NoSecrets
from ferry.proto import objects, subjects
from ferry.proto.subjects import Bucket, Service
from ferry.runtime.providers import Providers

sys.path.insert(0, str(Path(__file__).parents[1] / "volume_service"))

import volume_harness

MiB = 1 << 20


@pytest.fixture
async def bus(nats_url: str) -> AsyncIterator[Bus]:
    async with await Bus.connect(nats_url, name="test") as connected:
        await topology.declare(connected, services=list(Service))
        yield connected


def _doc(kind: str, name: str, spec: dict[str, Any]) -> Any:
    doc = {"apiVersion": objects.API_VERSION, "kind": kind, "metadata": {"name": name}}
    return objects.to_document(objects.parse_object({**doc, "spec": spec}, "test"))


async def _plan_on_a_real_ova(bus: Bus, root: Path, secret: str | None = None) -> None:
    """Plan ``p1`` of VM web01 from OVA provider ``src`` (never migrated) to ``demo``."""
    await volume_harness.make_ova(root, "web01", size=32 * MiB, raw=True)
    store = bus.kv(Bucket.OBJECTS, dict)
    source: dict[str, Any] = {"type": "ova", "url": str(root)}
    if secret:
        source["secret"] = {"name": secret}
    for kind, name, spec in (
        ("Provider", "src", source),
        ("Provider", "local", {"type": "kubevirt"}),
        (
            "Plan",
            "p1",
            {
                "provider": {"source": {"name": "src"}, "destination": {"name": "local"}},
                "map": {"network": {"name": "nets"}, "storage": {"name": "stores"}},
                "targetNamespace": "demo",
                "vms": [{"name": "web01"}],
            },
        ),
    ):
        await store.put(subjects.object_key(kind, name), _doc(kind, name, spec))


def _throughput(estimate: dict[str, Any]) -> dict[str, Any]:
    return next(i for i in estimate["inputs"] if i["name"] == "throughput")


async def test_plan_view_probes_a_pair_with_no_history_once_and_shows_probed(
    bus: Bus, tmp_path: Path
) -> None:
    # Given a plan on a real OVA source that never migrated, and a console that counts how
    # often it opens the source
    await _plan_on_a_real_ova(bus, tmp_path / "import")
    providers = Providers(bus, NoSecrets())  # as the console opens sources
    opened: list[str] = []

    async def open_source(ref: Any) -> Any:
        opened.append(ref.provider)
        return await providers.open(ref)

    settings = Settings(data_dir=tmp_path, http={"host": "127.0.0.1", "port": 0})
    server = Console(settings, access.Token("t" * 32), bus, bus, open_source=open_source)
    server.declared = True
    await server.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            # When the page reads the snapshot
            async with http.get(f"{url}/api/snapshot") as response:
                first = (await response.json())["plans"][0]
            # Then it is not held by the probe: the throughput is the default, saying
            # the source is being probed
            assert first["probing"] is True
            assert _throughput(first["estimate"])["basis"].endswith("probing the source")
            # And the plan's estimate, asked for by the page, waits for the probe: probed,
            # with what was read
            async with http.get(f"{url}/api/plans/p1/estimate") as response:
                assert response.status == 200
                got = await response.json()
            assert got["probing"] is False
            throughput = _throughput(got["estimate"])
            assert throughput["probed"] is True and throughput["measured"] is True, throughput
            assert throughput["value"] > 0
            assert "no finished migration on src -> demo; probe read " in throughput["basis"]
            assert "web01" in throughput["basis"]
            # and the VM is sized from what the probe read (no inventory was published yet)
            assert got["estimate"]["vms"][0]["bytes"] > 0
            # and an OVA source is said to be cold only (the page leaves the warm figures out)
            assert got["cold_only"] == first["cold_only"] == "OVA sources cannot run warm"
            # And the next snapshots (other pages) show it at once, from the one probe
            for _ in range(3):
                async with http.get(f"{url}/api/snapshot") as response:
                    again = (await response.json())["plans"][0]
                assert again["probing"] is False
                assert _throughput(again["estimate"]) == throughput
            assert opened == ["src"]
            # And a plan that does not exist is a 404, not a probe
            async with http.get(f"{url}/api/plans/nope/estimate") as response:
                assert response.status == 404
    finally:
        await server.stop()


async def test_a_source_that_needs_credentials_stays_assumed_with_the_reason(
    bus: Bus, tmp_path: Path
) -> None:
    # Given a plan whose source names a Secret (which the console never holds)
    await _plan_on_a_real_ova(bus, tmp_path / "import", secret="ova-creds")
    settings = Settings(data_dir=tmp_path, http={"host": "127.0.0.1", "port": 0})
    server = Console(settings, access.Token("t" * 32), bus, bus)
    server.declared = True
    await server.start()
    try:
        # When the page asks for the plan's estimate
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{server.port}/api/plans/p1/estimate") as response,
        ):
            got = await response.json()
    finally:
        await server.stop()
    # Then the throughput is the stated default, and says why it was not probed
    throughput = _throughput(got["estimate"])
    assert throughput["measured"] is False and not throughput.get("probed"), throughput
    assert "the console holds no credentials" in throughput["basis"], throughput
