"""One real service as its own process: probes, metrics, JSON logs, SIGTERM → exit 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVICE_MODULE = "ferry.vm_service"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return None, ""


def _start(nats_url: str, data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        FERRY_NATS__URL=nats_url,
        FERRY_HTTP__HOST="127.0.0.1",
        FERRY_HTTP__PORT=str(port),
        FERRY_DATA_DIR=str(data_dir),
        FERRY_LOG__FORMAT="json",
        FERRY_WORKERS__GRACE_SECONDS="5",
    )
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", SERVICE_MODULE], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def _wait(
    url: str, want: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"service exited {proc.returncode}:\n{log.read_text()}"
        status, body = _status(url)
        if status == want:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {want}:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_service_process_serves_probes_and_exits_zero_on_sigterm(
    nats_server, tmp_path: Path
) -> None:
    # Given the vm-service started as a process against a private nats-server
    port, log = _free_port(), tmp_path / "vm-service.log"
    proc = _start(nats_server.url, tmp_path, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        # When it is ready
        ready = json.loads(_wait(f"{base}/readyz", 200, proc, log))

        # Then readiness names its checks, liveness and metrics answer
        assert ready["ready"] is True
        assert set(ready["checks"]) == {"bus_connected", "topology_declared", "router_running"}
        assert _status(f"{base}/healthz")[0] == 200
        status, metrics = _status(f"{base}/metrics")
        assert status == 200
        assert 'ferry_in_flight{service="vm-service"} 0.0' in metrics
    finally:
        # When it receives SIGTERM
        code = _stop(proc)

    # Then it drains and exits 0, having logged JSON lines that name the service
    assert code == 0, log.read_text()
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert entries, log.read_text()
    assert {e["service"] for e in entries} == {"vm-service"}
    assert any("SIGTERM" in e["message"] for e in entries)


def test_sigterm_while_nats_is_unreachable_exits_zero(tmp_path: Path) -> None:
    # Given a service whose nats-server does not answer
    port, log = _free_port(), tmp_path / "vm-service.log"
    proc = _start(f"nats://127.0.0.1:{_free_port()}", tmp_path, port, log)
    try:
        # When it is alive (but not ready)
        _wait(f"http://127.0.0.1:{port}/healthz", 200, proc, log)
        assert _status(f"http://127.0.0.1:{port}/readyz")[0] == 503
    finally:
        # and gets SIGTERM
        code = _stop(proc)

    # Then it stops at once with exit code 0
    assert code == 0, log.read_text()


def test_invalid_settings_exit_2_naming_the_variable(tmp_path: Path) -> None:
    # Given a concurrency that is not a number
    env = dict(os.environ, FERRY_WORKERS__CONCURRENCY="lots", FERRY_DATA_DIR=str(tmp_path))

    # When the service starts
    done = subprocess.run(
        [sys.executable, "-m", SERVICE_MODULE], env=env, capture_output=True, timeout=60
    )

    # Then it refuses with exit code 2 and names the variable
    assert done.returncode == 2
    assert b"FERRY_WORKERS__CONCURRENCY" in done.stderr
