"""``ferry up --nats-cluster N``: each node's configuration, the stack's record of the
nodes, and what the services are told (replicas, every node's URL)."""

from __future__ import annotations

from pathlib import Path

from ferry.runtime.stack import launch, nats, services
from ferry.runtime.stack.processes import Process
from ferry.runtime.stack.state import Stack


def test_each_node_routes_to_the_others_with_its_own_store_and_name(tmp_path: Path) -> None:
    ports = (7101, 7102, 7103)
    texts = [
        nats.stack_config(tmp_path, 0, monitor_port=0, cluster=nats.ClusterNode(n, ports))
        for n in (1, 2, 3)
    ]
    for number, text in enumerate(texts, 1):
        assert f"server_name: ferry-local-{number}" in text
        assert f"  listen: 127.0.0.1:{ports[number - 1]}" in text
        others = [p for p in ports if p != ports[number - 1]]
        assert f"routes: [{', '.join(f'nats-route://127.0.0.1:{p}' for p in others)}]" in text
        assert "sync_interval: always" in text
    assert f'store_dir: "{tmp_path}/jetstream"' in texts[0]
    assert f'store_dir: "{tmp_path}/jetstream-2"' in texts[1]
    assert nats.config_file(tmp_path, 1).name == "nats.conf"
    assert nats.config_file(tmp_path, 3).name == "nats-3.conf"
    assert [nats.node_name(n) for n in (1, 2)] == ["nats-server", "nats-server-2"]


def test_a_single_server_has_no_cluster_block(tmp_path: Path) -> None:
    text = nats.stack_config(tmp_path, 4222, monitor_port=None)
    assert "cluster {" not in text and "server_name: ferry-local\n" in text


def _proc(name: str, pid: int) -> Process:
    return Process(name=name, pid=pid, started=1, port=4222 + pid, log=f"/l/{name}")


def test_the_stack_records_every_node_and_tells_the_services_the_replicas(
    tmp_path: Path,
) -> None:
    stack = Stack(
        data_dir=str(tmp_path),
        nats_url="nats://127.0.0.1:1,nats://127.0.0.1:2,nats://127.0.0.1:3",
        nats_monitor="http://127.0.0.1:9",
        nats=_proc("nats-server", 1),
        nats_peers=[_proc("nats-server-2", 2), _proc("nats-server-3", 3)],
        services=[_proc(spec.name, 10 + n) for n, spec in enumerate(services.SERVICES)],
    )
    stack.save(tmp_path)
    loaded = Stack.load(tmp_path)
    assert loaded is not None
    assert [p.name for p in loaded.nats_nodes()] == [
        "nats-server",
        "nats-server-2",
        "nats-server-3",
    ]
    assert {p.name for p in loaded.processes()} >= {"nats-server-2", "nats-server-3"}
    assert launch.cluster_settings(loaded) == {"FERRY_BUS__REPLICAS": "3"}
    names = [p.name for p in launch.programs(loaded, tmp_path)]
    assert names[-3:] == ["nats-server", "nats-server-2", "nats-server-3"]

    single = Stack(str(tmp_path), "nats://127.0.0.1:1", "http://x", _proc("nats-server", 1))
    assert launch.cluster_settings(single) == {}
