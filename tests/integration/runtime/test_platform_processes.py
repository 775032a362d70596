"""Every service started as its own process on the kubernetes platform, and on bad settings.

The Helm chart runs the services with ``FERRY_PLATFORM__KIND=kubernetes``; this is
that start-up, on this machine: a private nats-server, a Kubernetes API stand-in
(kmock) named by ``FERRY_PLATFORM__KUBERNETES__HOST``, and each service as a real
process that must answer ``/readyz`` with 200. A platform setting that is wrong
must stop a service with exit code 2 and a message naming the variable, never a
traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import kmock
import pytest

SERVICES = (
    "ferry.migration_controller",
    "ferry.volume_service",
    "ferry.conversion_service",
    "ferry.vm_service",
)
# The services that build a platform, and so read the platform group.
PLATFORM_SERVICES = SERVICES[1:]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def _environment(nats_url: str, data_dir: Path, port: int, **settings: str) -> dict[str, str]:
    # The caller's FERRY_ variables stay out: the test decides every setting.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(
        FERRY_NATS__URL=nats_url,
        FERRY_HTTP__HOST="127.0.0.1",
        FERRY_HTTP__PORT=str(port),
        FERRY_DATA_DIR=str(data_dir),
        FERRY_LOG__FORMAT="json",
        FERRY_WORKERS__GRACE_SECONDS="2",
        **settings,
    )
    return env


def _start(module: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", module], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def _ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    # Polled from the event loop so the API stand-in, served on it, keeps answering.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        if await asyncio.to_thread(_status, url) == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} never answered 200:\n{log.read_text()}")


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@pytest.fixture
async def cluster() -> AsyncIterator[kmock.KubernetesEmulator]:
    async with kmock.KubernetesEmulator() as mock, kmock.Server(mock):
        yield mock


async def test_every_service_starts_on_the_kubernetes_platform(
    nats_server, cluster: kmock.KubernetesEmulator, tmp_path: Path
) -> None:
    # Given the kubernetes platform, pointed at the API stand-in, for every service
    platform = {
        "FERRY_PLATFORM__KIND": "kubernetes",
        "FERRY_PLATFORM__KUBERNETES__HOST": str(cluster.url).rstrip("/"),
        "FERRY_PLATFORM__KUBERNETES__PVCINIT_IMAGE": "ferry:test",
    }
    running: dict[str, tuple[subprocess.Popen[bytes], Path, int]] = {}
    try:
        # When each one is started as its own process
        for module in SERVICES:
            port, log = _free_port(), tmp_path / f"{module}.log"
            env = _environment(nats_server.url, tmp_path / "data", port, **platform)
            running[module] = (_start(module, env, log), log, port)

        # Then each answers /readyz with 200
        for proc, log, port in running.values():
            await _ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        # and those that use a platform built the kubernetes one, aimed at the stand-in
        for module in PLATFORM_SERVICES:
            assert "target platform: kubernetes (API host)" in running[module][1].read_text()
    finally:
        codes = {module: _stop(proc) for module, (proc, _, _) in running.items()}
    # and each stops cleanly on SIGTERM
    assert codes == dict.fromkeys(SERVICES, 0), {
        m: running[m][1].read_text() for m, code in codes.items() if code != 0
    }


@pytest.mark.parametrize(
    ("module", "variable", "value"),
    [
        *((module, "FERRY_PLATFORM__KIND", "openshift") for module in PLATFORM_SERVICES),
        ("ferry.volume_service", "FERRY_PLATFORM__KUBERNETES__BIND_TIMEOUT", "-1"),
        ("ferry.vm_service", "FERRY_PLATFORM__LOCAL__QEMU__ACCEL", "hvf"),
        ("ferry.conversion_service", "FERRY_PLATFORM__KUBERNETES__KUBECONFIGG", "/etc/kube"),
        ("ferry.volume_service", "FERRY_PLATFORM", "kubernetes"),  # the name before the group
    ],
)
def test_a_bad_platform_setting_stops_the_service_naming_the_variable(
    module: str, variable: str, value: str, nats_server, tmp_path: Path
) -> None:
    # Given one wrong platform setting
    env = _environment(nats_server.url, tmp_path, _free_port(), **{variable: value})

    # When the service starts
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )

    # Then it exits 2, naming the variable, without a traceback
    assert done.returncode == 2, done.stderr
    assert variable in done.stderr
    assert "Traceback" not in done.stderr
