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

Starting, identifying, probing and stopping the processes is the stack machinery
of :mod:`ferry.runtime.stack`, shared with the test harness; this module keeps
what is the command's own: the state file and its lock, the foreground
supervision, and what it prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.runtime.stack import StackError, nats, ports, processes, readiness, services
from ferry.runtime.stack.processes import Process

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
STATE_VERSION = 1


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


def default_data_dir() -> Path:
    return Path(os.environ.get("FERRY_DATA_DIR") or ".ferry")


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


def stop_stack(stack: Stack, timeout: float) -> list[str]:
    """Services first (they drain while the bus is still up), nats-server last."""
    killed = processes.stop(stack.services, timeout)
    killed += processes.stop([stack.nats], timeout)
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
        server, bound = nats.start(data_dir, nats_port, timeout)
        started.append(server)
        assert bound.monitor is not None  # ferry up always turns monitoring on
        stack = Stack(
            data_dir=str(data_dir),
            nats_url=bound.url,
            nats_monitor=bound.monitor,
            nats=server,
            foreground_pid=os.getpid() if foreground else None,
        )
        for spec, port in zip(
            services.SERVICES, ports.service_ports(http_port, len(services.SERVICES)), strict=True
        ):
            log = data_dir / "logs" / f"{spec.name}.log"
            env = services.environment(data_dir, bound.url, port)
            proc, _ = processes.spawn(spec.name, spec.argv(), log, env, port)
            started.insert(0, proc)
            stack.services.append(proc)
        stack.save(data_dir)
        readiness.wait_ready(stack.services, timeout, interrupted)
        return stack
    except BaseException:
        processes.stop([p for p in started if p.name != "nats-server"], 10)
        processes.stop([p for p in started if p.name == "nats-server"], 10)
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
    lines += console_lines(stack)
    return "\n".join(lines)


def console_lines(stack: Stack) -> list[str]:
    """Where the console is and its token: shown on a terminal, only its file in a log."""
    proc = next((p for p in stack.services if p.name == "console"), None)
    if proc is None:
        return []
    path = Path(stack.data_dir) / "console" / "token"
    lines = [f"console    {proc.url}/"]
    try:
        token = path.read_text().strip()
    except OSError:
        return [*lines, f"           token for actions: in {path} once the console is up"]
    if sys.stdout.isatty():
        return [*lines, f"           token for actions: {token}  (also in {path})"]
    return [*lines, f"           token for actions: in {path} (not printed into a log)"]


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
        processes.reap()
        dead = [p for p in stack.processes() if not p.alive()]
        if dead or not (data_dir / STATE_FILE).exists():
            # A `ferry down` from elsewhere holds the lock while it stops things.
            with _locked(data_dir, wait=120):
                if not (data_dir / STATE_FILE).exists():
                    typer.echo("stack stopped by `ferry down`")
                    return 0
            for proc in dead:
                typer.echo(
                    f"{proc.name} exited unexpectedly:\n{processes.tail(proc.log)}", err=True
                )
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
    nats_ok = stack.nats.alive() and readiness.http_status(f"{stack.nats_monitor}/healthz") == 200
    healthy &= nats_ok
    typer.echo(f"  {'nats-server':<22} pid {stack.nats.pid:<7} {'ready' if nats_ok else 'DOWN'}")
    for proc in stack.services:
        code = readiness.readiness(proc) if proc.alive() else None
        state = "ready" if code == 200 else ("not ready" if code else "DOWN")
        healthy &= code == 200
        typer.echo(f"  {proc.name:<22} pid {proc.pid:<7} {state:<10} {proc.url}/readyz")
    if not healthy:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
