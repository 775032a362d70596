"""The stack machinery shared by ``ferry up`` and the e2e harness, without a stack."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ferry.proto.subjects import Service
from ferry.runtime.lifecycle import process_name
from ferry.runtime.stack import nats, ports, processes, services


def test_one_list_of_services_names_every_process() -> None:
    # Then every service token has exactly one entry, in start order, and the
    # runtime's process names come from it
    bus_services = [s for s in services.SERVICES if s.service is not None]
    assert [s.service for s in bus_services] == list(Service)
    assert [s.name for s in bus_services] == [process_name(s) for s in Service]
    assert services.named("console").module == "ferry.console"
    assert services.named("vm-service").module == "ferry.vm_service"
    assert services.of(Service.VOLUME).argv() == [sys.executable, "-m", "ferry.volume_service"]
    with pytest.raises(KeyError):
        services.named("nope")


def test_environment_adds_the_bus_and_port_and_keeps_the_slot_port(tmp_path: Path) -> None:
    # When a test's settings try to override the port
    env = services.environment(
        tmp_path, "nats://127.0.0.1:4222", 8123, {"FERRY_HTTP__PORT": "1", "FERRY_X": "y"}
    )

    # Then they apply, except the port, which is the slot's own
    assert env["FERRY_DATA_DIR"] == str(tmp_path)
    assert env["FERRY_NATS__URL"] == "nats://127.0.0.1:4222"
    assert env["FERRY_HTTP__HOST"] == "127.0.0.1"
    assert env["FERRY_HTTP__PORT"] == "8123"
    assert env["FERRY_X"] == "y"
    assert env["PATH"] == os.environ["PATH"]


def test_service_ports_follow_the_first_or_are_distinct() -> None:
    assert ports.service_ports(7000, 3) == [7000, 7001, 7002]
    free = ports.service_ports(0, 4)
    assert len(set(free)) == 4 and all(p > 0 for p in free)


def test_nats_config_ports_monitoring_and_fsync(tmp_path: Path) -> None:
    text = nats.config(tmp_path / 'st"ore', 0, monitor_port=0)
    assert "listen: 127.0.0.1:-1" in text and "http: 127.0.0.1:-1" in text
    assert "sync_interval: always" in text
    assert 'store_dir: "' + str(tmp_path) + '/st\\"ore"' in text

    plain = nats.config(tmp_path, 4222, fsync_always=False, max_payload="1MB")
    assert "listen: 127.0.0.1:4222" in plain and "http:" not in plain
    assert "sync_interval" not in plain and "max_payload: 1MB" in plain


def test_a_reused_pid_is_not_ours(tmp_path: Path) -> None:
    # Given a process record whose start time does not match the live pid
    me = processes.start_time(os.getpid())
    assert me is not None
    stranger = processes.Process("x", os.getpid(), me + 1, str(tmp_path / "log"), 0)

    # Then it counts as gone, and stopping it signals nothing
    assert not stranger.alive()
    assert processes.stop([stranger], timeout=0.1) == []


def test_spawn_and_stop_a_child(tmp_path: Path) -> None:
    # Given a child of the stack
    proc, popen = processes.spawn(
        "sleeper", ["sleep", "30"], tmp_path / "logs" / "s.log", os.environ, 0
    )
    assert proc.alive()

    # When it is stopped
    assert processes.stop([proc], timeout=5) == []

    # Then it is gone and reaped
    assert not proc.alive()
    assert popen.poll() is not None


def test_tail_of_a_missing_log(tmp_path: Path) -> None:
    assert "no log" in processes.tail(tmp_path / "missing.log")
    (tmp_path / "a.log").write_text("\n".join(str(i) for i in range(50)))
    assert processes.tail(tmp_path / "a.log", 2) == "48\n49"
