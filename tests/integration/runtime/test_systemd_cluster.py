"""``ferry install-service --nats-cluster 3``: three nats-server units routed as one
JetStream cluster, and services that use it with three replicas.

systemd does not run here: each nats-server is started with its unit's own ExecStart
line, as systemd would, and a service connects with its unit's own environment.
"""

from __future__ import annotations

import json
import random
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from ferry.bus import Bus, TopologySettings, topology
from ferry.runtime import secretfiles
from ferry.runtime.stack import nats, readiness, services, systemd

SIZE = 3


def _sections(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("["):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def _free_run(count: int) -> int:
    """The first of ``count`` consecutive ports nobody listens on (fixed ports, as units have)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no run of free ports")


def _jsz(monitor: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{monitor}/jsz?streams=true&config=true"
    with urllib.request.urlopen(url, timeout=5) as answer:
        found: dict[str, Any] = json.load(answer)
    return found


async def test_three_node_units_form_one_cluster_and_services_replicate_on_it(
    tmp_path: Path,
) -> None:
    # Given the units and configurations `ferry install-service --nats-cluster 3` writes
    data, unit_dir = tmp_path / "data", tmp_path / "units"
    client, monitor, route = _free_run(SIZE), _free_run(SIZE), _free_run(SIZE)
    done = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "install-service", "--data-dir", str(data),
         "--unit-dir", str(unit_dir), "--nats-cluster", str(SIZE), "--nats-port", str(client),
         "--monitor-port", str(monitor), "--cluster-port", str(route), "--http-port", "18081"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    units = {p.name: p.read_text() for p in unit_dir.iterdir()}
    servers = [systemd.nats_unit(n) for n in range(1, SIZE + 1)]
    assert sorted(units) == sorted(
        [*servers, *(systemd.unit_name(s.name) for s in services.SERVICES), systemd.TARGET]
    )
    # (each service waits for every node, and the target wants them all)
    vm = _sections(units[systemd.unit_name("vm-service")])
    assert vm["Wants"] == [" ".join(servers)] and vm["After"] == [" ".join(servers)]
    env = dict(e.strip('"').split("=", 1) for e in vm["Environment"])
    assert env["FERRY_BUS__REPLICAS"] == str(SIZE)
    assert env["FERRY_NATS__URL"] == ",".join(f"nats://127.0.0.1:{client + n}" for n in range(SIZE))

    # When each node is started with its unit's ExecStart line
    procs = []
    try:
        for unit in servers:
            argv = shlex.split(_sections(units[unit])["ExecStart"][0])
            procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )
        deadline = time.monotonic() + 60
        healthy = [f"http://127.0.0.1:{monitor + n}/healthz" for n in range(SIZE)]
        while not all(readiness.http_status(h) == 200 for h in healthy):
            assert time.monotonic() < deadline, "the cluster never became healthy"
            assert all(p.poll() is None for p in procs), "a node exited"
            time.sleep(0.2)

        # Then they are one cluster of three
        meta = _jsz(monitor)["meta_cluster"]
        assert meta["cluster_size"] == SIZE and meta["name"] == nats.CLUSTER_NAME

        # And a service connecting with its unit's environment declares streams and
        # buckets with three replicas
        creds = secretfiles.credentials(Path(env["FERRY_NATS__CREDENTIALS_FILE"]))
        urls = env["FERRY_NATS__URL"].split(",")
        settings = TopologySettings(replicas=int(env["FERRY_BUS__REPLICAS"]))
        async with await Bus.connect(urls, name="vm", credentials=creds, settings=settings) as bus:
            await topology.declare(bus, settings, [services.named("vm-service").service])  # type: ignore[list-item]
        streams = [
            s
            for account in _jsz(monitor).get("account_details", [])
            for s in account.get("stream_detail", [])
        ]
        assert streams and {s["config"]["num_replicas"] for s in streams} == {SIZE}
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
