"""The console as ``ferry up`` runs it: its own process, bound to loopback, the token kept
out of its log, its command line and its environment."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from ferry.testing import console
from ferry.testing.console import ConsoleProcess


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
    console_process: ConsoleProcess, tmp_path: Path
) -> None:
    proc, port, log = console_process.proc, console_process.port, console_process.log
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


def test_started_before_the_services_declare_it_waits_without_a_warning(
    nats_url: str, tmp_path: Path
) -> None:
    # Given a console started before any service declared the stream and buckets (the
    # race of `ferry up`), and then the services declaring them
    running = console.start(nats_url, tmp_path, declared=False)
    try:
        text = running.log.read_text()
    finally:
        assert running.stop() == 0
    # Then it waited and became ready, with no warning of views it could not read
    assert "waiting for the services to declare" in text
    assert '"level": "WARNING"' not in text, text
