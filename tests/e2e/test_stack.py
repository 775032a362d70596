"""The embedded local stack as a user runs it: ``ferry up``, probes, ``ferry down``.

Everything here is real: the pinned nats-server, the four services as separate
processes, HTTP probes over loopback, signals. The stack lives in a temporary
data dir, on free ports, so it never meets another test's or the machine's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SERVICES = ["migration-controller", "volume-service", "conversion-service", "vm-service", "console"]


def ferry(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _get(url: str) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return None, ""


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for init to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def _pids(state: dict[str, Any]) -> list[int]:
    return [state["nats"]["pid"], *(s["pid"] for s in state["services"])]


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "ferry"
    yield path
    # Whatever a failed assertion left running is stopped here.
    if (path / "stack.json").exists():
        ferry("down", "--data-dir", str(path), "--timeout", "10")


def test_up_detach_probe_up_again_down(data_dir: Path) -> None:
    # When the stack is started in the background
    up = ferry("up", "--detach", "--data-dir", str(data_dir))

    # Then it reports where everything is
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((data_dir / "stack.json").read_text())
    assert state["nats_url"] in up.stdout
    assert str(data_dir.resolve()) in up.stdout
    assert [s["name"] for s in state["services"]] == SERVICES
    ports = {s["port"] for s in state["services"]}
    assert len(ports) == len(SERVICES)
    for service in state["services"]:
        base = f"http://127.0.0.1:{service['port']}"
        assert f"{base}/readyz" in up.stdout
        assert f"{base}/metrics" in up.stdout

        # and every service is ready and serves its metrics
        status, body = _get(f"{base}/readyz")
        assert status == 200, (service["name"], body)
        assert json.loads(body)["service"] == service["name"]
        status, metrics = _get(f"{base}/metrics")
        assert status == 200
        assert f'ferry_in_flight{{service="{service["name"]}"}}' in metrics
        assert "ferry_messages_handled_total" in metrics

        # and logs JSON lines to its own file in the data dir
        first = (data_dir / "logs" / f"{service['name']}.log").read_text().splitlines()[0]
        assert json.loads(first)["service"] == service["name"]

    # and the nats-server runs JetStream in the data dir, fsyncing every write
    config = (data_dir / "nats" / "nats.conf").read_text()
    assert "sync_interval: always" in config
    assert (data_dir / "jetstream").is_dir()

    # When `ferry up` runs again
    again = ferry("up", "--detach", "--data-dir", str(data_dir))

    # Then it reports the running stack and starts nothing
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    assert json.loads((data_dir / "stack.json").read_text()) == state

    # When the status is asked
    status_run = ferry("status", "--data-dir", str(data_dir))
    assert status_run.returncode == 0, status_run.stdout
    assert status_run.stdout.count("ready") >= 1 + len(SERVICES)

    # When the stack is taken down
    down = ferry("down", "--data-dir", str(data_dir))

    # Then every process is gone and the state is removed
    assert down.returncode == 0, down.stderr
    assert all(_gone(pid) for pid in _pids(state)), _pids(state)
    assert not (data_dir / "stack.json").exists()
    for service in state["services"]:
        assert _get(f"http://127.0.0.1:{service['port']}/readyz")[0] is None
        log = (data_dir / "logs" / f"{service['name']}.log").read_text()
        assert "SIGTERM received" in log
        assert f"{service['name']} stopped" in log
    assert ferry("status", "--data-dir", str(data_dir)).returncode == 1
    assert "no Ferry stack running" in ferry("down", "--data-dir", str(data_dir)).stdout


def test_foreground_stack_stops_everything_on_ctrl_c(data_dir: Path) -> None:
    # Given `ferry up` in the foreground
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli.main", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("ready" in line for line in lines), "".join(lines)
        state = json.loads((data_dir / "stack.json").read_text())
        assert state["foreground_pid"] == proc.pid

        # When it gets Ctrl-C
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Then it stops the services and nats-server and exits 0
    assert proc.returncode == 0, output
    assert "stopped" in output
    assert all(_gone(pid) for pid in _pids(state))
    assert not (data_dir / "stack.json").exists()


def test_down_from_elsewhere_ends_a_foreground_stack(data_dir: Path) -> None:
    # Given a foreground stack
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli.main", "up", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    try:
        deadline = time.monotonic() + 90
        while not (data_dir / "stack.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        status = ferry("status", "--data-dir", str(data_dir))
        deadline = time.monotonic() + 60
        while status.returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = ferry("status", "--data-dir", str(data_dir))
        assert status.returncode == 0, status.stdout

        # When another terminal runs `ferry down`
        down = ferry("down", "--data-dir", str(data_dir))
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()

    # Then both end cleanly
    assert down.returncode == 0, down.stderr
    assert proc.returncode == 0, output
    assert "stopped by `ferry down`" in output


def test_two_concurrent_ups_start_one_stack(data_dir: Path) -> None:
    # When two `ferry up --detach` race on one data dir
    argv = [sys.executable, "-m", "ferry.cli.main", "up", "--detach", "--data-dir", str(data_dir)]
    racers = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [r.communicate(timeout=120)[0] for r in racers]

    # Then both succeed, one started the stack and the other reports it
    assert [r.returncode for r in racers] == [0, 0], outputs
    assert sum("already running" in out for out in outputs) == 1, outputs
    state = json.loads((data_dir / "stack.json").read_text())
    assert all(state["nats_url"] in out for out in outputs)
    nats_servers = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and str(data_dir) in _cmdline(int(pid))
        and "nats-server" in _cmdline(int(pid))
    ]
    assert nats_servers == [str(state["nats"]["pid"])]

    assert ferry("down", "--data-dir", str(data_dir)).returncode == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_up_with_tls_every_process_and_the_cli_verify_the_stacks_ca(data_dir: Path) -> None:
    # When the stack is started with TLS
    up = ferry("up", "--detach", "--tls", "--data-dir", str(data_dir))

    # Then NATS speaks TLS only, and every service connected through it (ready)
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((data_dir / "stack.json").read_text())
    assert state["nats_url"].startswith("tls://")
    for service in state["services"]:
        code, _ = _get(f"http://127.0.0.1:{service['port']}/readyz")
        assert code == 200, service["name"]
    # And the CLI verifies the server with the stack's CA (found in the data dir)
    env = {**os.environ, "FERRY_DATA_DIR": str(data_dir)}
    env.pop("FERRY_NATS__TLS_CA_FILE", None)
    listed = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "get", "plans"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    # But not with a CA it was not given: the system's CAs do not vouch for the stack
    other = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "get", "plans"],
        capture_output=True, text=True, timeout=60,
        env={**env, "FERRY_NATS__TLS_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"},
    )  # fmt: skip
    assert other.returncode != 0 and "TLS" in other.stderr, other.stdout + other.stderr

    down = ferry("down", "--data-dir", str(data_dir))
    assert down.returncode == 0, down.stdout + down.stderr
