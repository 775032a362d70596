"""The console as ``ferry up`` runs it: its own process, bound to loopback, the token kept
out of its log, its command line and its environment."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from ferry.bus import Bus, topology
from ferry.proto.subjects import Service
from ferry.runtime.stack import ports, services


async def declare(url: str) -> None:
    async with await Bus.connect(url, name="test") as bus:
        await topology.declare(bus, services=list(Service))


@pytest.fixture
def console_process(nats_url: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    asyncio.run(declare(nats_url))  # what the other services do when they start
    port = ports.free_port()
    env = services.environment(tmp_path, nats_url, port)
    del env["FERRY_HTTP__HOST"]  # the console's own default must keep it on loopback
    env["FERRY_LOG__LEVEL"] = "DEBUG"
    log = tmp_path / "console.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            services.named("console").argv(), env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).close()
                break
            except (OSError, urllib.error.URLError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"console did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield proc, port, log
    finally:
        proc.terminate()
        proc.wait(15)


def post(port: int, path: str, token: str | None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=b"{}", method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return refused.code


def test_binds_loopback_and_keeps_the_token_out_of_logs_argv_and_env(
    console_process: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    proc, port, log = console_process
    # Then it listens on 127.0.0.1 only
    listening = [
        c.laddr
        for c in psutil.Process(proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening
    # and it made a private token file in the data dir
    token_file = tmp_path / "console" / "token"
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600

    # When writes arrive with a wrong token, none, and the right one
    wrong = "guessed-token-guessed-token-000"
    assert post(port, "/api/session", wrong) == 401
    assert post(port, "/api/session", None) == 401
    assert post(port, "/api/session", token) == 200
    assert post(port, "/api/plans/nope/start", token) == 404, log.read_text()[-3000:]
    proc.terminate()
    assert proc.wait(15) == 0

    # Then neither token appears in its log, and the real one not in argv or environment
    text = log.read_text()
    assert "console on http://127.0.0.1" in text
    assert token not in text and wrong not in text
    assert token not in " ".join(proc.args)  # type: ignore[arg-type]
    assert all(token not in value for value in os.environ.values())
    assert sys.executable in proc.args
