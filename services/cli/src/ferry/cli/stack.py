"""``ferry up``, ``down``, ``status`` and ``logs``: the whole stack on one machine.

``ferry up`` starts a nats-server with JetStream (file store in the data dir,
``sync_interval: always`` so an acknowledged event survives a crash) and the four
services as separate child processes, each with its own log file and HTTP port,
waits until every ``/readyz`` answers, and then *supervises* them: a process that
exits or is killed is restarted (:mod:`ferry.runtime.stack.supervisor`). In the
foreground this command is the supervisor; with ``--detach`` a background
supervisor process is, recorded in ``<data>/stack.json`` beside the pids and
kernel start times of what it supervises. That file is how a second ``ferry up``
finds the running stack (and adopts it if its supervisor died), and how ``ferry
down`` stops exactly those processes, after making the supervisor let go so that
nothing is restarted while the stack goes down.

Starting, identifying, probing, supervising and stopping the processes is the
stack machinery of :mod:`ferry.runtime.stack`, shared with the test harness;
this module keeps what is the command's own: options, signals and printing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ferry.runtime.stack import StackError, launch, processes, readiness, state
from ferry.runtime.stack.state import Health, RestartPolicy, Stack
from ferry.runtime.stack.supervisor import Supervisor

STATE_FILE = state.STATE_FILE


def default_data_dir() -> Path:
    return Path(os.environ.get("FERRY_DATA_DIR") or ".ferry")


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


def _uptime(seconds: float) -> str:
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


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

NatsCluster = Annotated[
    int,
    typer.Option(
        "--nats-cluster",
        min=1,
        max=5,
        help="Run NATS as a JetStream cluster of this many nats-servers on loopback "
        "(streams and buckets get one replica per node); 1: a single server.",
    ),
]


def _resolve(data_dir: Path | None) -> Path:
    return (data_dir or default_data_dir()).expanduser().resolve()


def no_stack(where: Path) -> str:
    """What every command says when it finds no stack: where it looked, how to start one
    or name another."""
    return (
        f"no Ferry stack found in {where}: start one with `ferry up`, or name the "
        "data dir of a running one in FERRY_DATA_DIR (`make demo`'s is .ferry/demo), "
        "or point to one with --nats URL (or FERRY_NATS__URL) and its CLI identity "
        "in FERRY_NATS__CREDENTIALS_FILE"
    )


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
    tls_on: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="NATS speaks only TLS, with a certificate of a local CA made in "
            "<data>/nats/tls (services, console and CLI verify it).",
        ),
    ] = False,
    nats_cluster: NatsCluster = 1,
    restart_delay: Annotated[
        float, typer.Option(help="Seconds before restarting a process that ended.")
    ] = RestartPolicy.delay,
    restart_max_delay: Annotated[
        float, typer.Option(help="Cap of the delay, which doubles with each fast failure.")
    ] = RestartPolicy.max_delay,
    min_uptime: Annotated[
        float, typer.Option(help="A run shorter than this many seconds is a fast failure.")
    ] = RestartPolicy.min_uptime,
    crash_loop_after: Annotated[
        int, typer.Option(help="Fast failures in a row after which a process is left down.")
    ] = RestartPolicy.crash_loop_after,
) -> None:
    """Start nats-server (JetStream) and the four services, wait until all are ready,
    and keep them running (restarted with backoff when one exits)."""
    path = _resolve(data_dir)
    policy = RestartPolicy(restart_delay, restart_max_delay, min_uptime, crash_loop_after)
    signalled: list[int] = []
    previous = {} if detach else _catch_signals(signalled)
    try:
        try:
            with state.locked(path, wait=timeout + 30):  # a concurrent up: wait, then report it
                running = state.running(path)
                if running is not None and running.supervised():
                    _report_running(running, path)
                    return
                if detach:
                    stack = _detach(
                        path,
                        running,
                        nats_port,
                        http_port,
                        timeout,
                        policy,
                        tls_on=tls_on,
                        nats_cluster=nats_cluster,
                    )
                    _say_up(stack, path, adopted=running is not None)
                    typer.echo(f"Stop it with: ferry down --data-dir {path}")
                    return
                children: launch.Children = {}
                if running is not None:
                    stack = running
                    running.foreground_pid = None
                else:
                    stack, children = launch.start(
                        path,
                        nats_port=nats_port,
                        http_port=http_port,
                        timeout=timeout,
                        policy=policy,
                        foreground=True,
                        interrupted=lambda: bool(signalled),
                        tls_on=tls_on,
                        nats_cluster=nats_cluster,
                    )
                supervisor = Supervisor(
                    stack, path, launch.programs(stack, path), children, say=_err
                )
        except StackError as error:
            typer.echo(f"ferry up failed: {error}", err=True)
            raise typer.Exit(1) from None
        _say_up(stack, path, adopted=running is not None)
        typer.echo("Press Ctrl-C to stop.")
        code = _foreground(supervisor, path, signalled)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    raise typer.Exit(code)


def _err(line: str) -> None:
    typer.echo(line, err=True)


def _say_up(stack: Stack, path: Path, *, adopted: bool) -> None:
    if adopted:
        typer.echo(f"Adopted the running Ferry stack in {path}; supervising it again.")
    else:
        typer.echo("Ferry stack is up and ready.")
    typer.echo(describe(stack))


def _report_running(running: Stack, path: Path) -> None:
    typer.echo(f"Ferry stack already running in {path}:")
    typer.echo(describe(running))
    down = [name for name, seen in running.supervision.items() if seen.health is not Health.RUNNING]
    if down:
        typer.echo(f"not running: {', '.join(down)}; see `ferry status`", err=True)


def _detach(
    path: Path,
    running: Stack | None,
    nats_port: int,
    http_port: int,
    timeout: float,
    policy: RestartPolicy,
    *,
    tls_on: bool = False,
    nats_cluster: int = 1,
) -> Stack:
    """Start the background supervisor (which starts or adopts the stack) and wait until
    it supervises a ready stack; its log explains a failure."""
    popen = launch.spawn_supervisor(
        path,
        running is not None,
        nats_port,
        http_port,
        timeout,
        policy,
        tls_on=tls_on,
        nats_cluster=nats_cluster,
    )
    deadline = time.monotonic() + timeout + 30
    while time.monotonic() < deadline:
        stack = Stack.load(path)
        if (
            stack is not None
            and stack.ready
            and stack.supervisor is not None
            and stack.supervisor.pid == popen.pid
        ):
            return stack
        if popen.poll() is not None:
            log = path / "logs" / "supervisor.log"
            raise StackError(processes.tail(log, 40))
        time.sleep(0.1)
    popen.kill()
    raise StackError(f"the supervisor did not report a ready stack within {timeout + 30:.0f}s")


def _catch_signals(signalled: list[int]) -> dict[int, Any]:
    """Ctrl-C and SIGTERM (stop the stack) and `ferry down`'s release only set a flag:
    the loops notice it and act in order."""

    def on_signal(signum: int, _frame: object) -> None:
        signalled.append(signum)

    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, launch.RELEASE)}


def _foreground(supervisor: Supervisor, data_dir: Path, signalled: list[int]) -> int:
    """Supervise until Ctrl-C/SIGTERM (then stop everything) or `ferry down` (which
    stops everything itself once this has let go)."""
    supervisor.run(lambda: bool(signalled))
    if signalled[0] == launch.RELEASE:
        typer.echo("stack stopped by `ferry down`")
        return 0
    typer.echo("stopping services, then nats-server …")
    with state.locked(data_dir, wait=120):
        killed = launch.stop(supervisor.stack, timeout=45)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
    if killed:
        typer.echo(f"killed after the grace period: {', '.join(killed)}", err=True)
    typer.echo("stopped")
    return 0


def down(
    data_dir: DataDir = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds each group may take to stop before SIGKILL.")
    ] = 45.0,
) -> None:
    """Stop the stack: the supervisor first (so nothing is restarted), then the services
    (SIGTERM, drain, SIGKILL after --timeout), nats last."""
    path = _resolve(data_dir)
    try:
        with state.locked(path, wait=2 * timeout + 30):
            stack = state.running(path)
            if stack is None:
                typer.echo(f"no Ferry stack running in {path}")
                return
            if launch.release(stack):
                stack = Stack.load(path) or stack  # the pids it last restarted
            killed = launch.stop(stack, timeout)
            (path / STATE_FILE).unlink(missing_ok=True)
    except StackError as error:
        typer.echo(f"ferry down failed: {error}", err=True)
        raise typer.Exit(1) from None
    if killed:
        typer.echo(f"killed after {timeout:.0f}s: {', '.join(killed)}", err=True)
    typer.echo(f"Ferry stack in {path} stopped")


def status(data_dir: DataDir = None) -> None:
    """Show the supervisor and each process: readiness, restarts, last exit, uptime;
    exit 1 unless all are ready and supervised."""
    path = _resolve(data_dir)
    try:
        stack = state.running(path)
    except StackError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from None
    if stack is None:
        typer.echo(f"no Ferry stack running in {path}")
        raise typer.Exit(1)
    typer.echo(f"NATS {stack.nats_url}  data dir {stack.data_dir}")
    healthy = stack.supervised()
    if stack.supervisor is not None and healthy:
        typer.echo(f"  {'supervisor':<22} pid {stack.supervisor.pid:<7} running")
    else:
        typer.echo(f"  {'supervisor':<22} {'':<11} DOWN: nothing restarts; `ferry up` adopts")
    typer.echo(
        f"  {'process':<22} {'pid':<11} {'state':<10} {'restarts':>8}  "
        f"{'uptime':<8} {'last exit':<16} probe"
    )
    reasons = []
    for proc in stack.processes():
        seen = stack.supervision.get(proc.name) or state.Supervision()
        if proc in stack.nats_peers:  # a cluster node's monitor port is not recorded
            ok = proc.alive()
            text, probe = ("running" if ok else "DOWN"), f"127.0.0.1:{proc.port}"
        elif proc.name == "nats-server":
            ok = proc.alive() and readiness.http_status(f"{stack.nats_monitor}/healthz") == 200
            text, probe = ("ready" if ok else "DOWN"), f"{stack.nats_monitor}/healthz"
        else:
            code = readiness.readiness(proc) if proc.alive() else None
            ok = code == 200
            text = "ready" if ok else ("not ready" if code else "DOWN")
            probe = f"{proc.url}/readyz"
        if seen.health is Health.GAVE_UP:
            text = "GAVE UP"
            reasons.append(f"{proc.name}: {seen.reason}")
        elif seen.health is Health.BACKOFF:
            text = "restarting"
        healthy &= ok
        uptime = _uptime(time.time() - seen.since) if proc.alive() else "-"
        typer.echo(
            f"  {proc.name:<22} {proc.pid:<11} {text:<10} {seen.restarts:>8}  "
            f"{uptime:<8} {seen.last_exit or '-':<16} {probe}"
        )
    for reason in reasons:
        typer.echo(f"\n{reason}")
    if not healthy:
        raise typer.Exit(1)


def logs(
    name: Annotated[str, typer.Argument(help="A process: a service, nats-server or supervisor.")],
    data_dir: DataDir = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines from the end.")] = 50,
) -> None:
    """Print the log of one process of the stack (also of a stack that has stopped)."""
    where = _resolve(data_dir)
    path = where / "logs" / f"{name}.log"
    if not path.exists():
        typer.echo(_no_log(name, where), err=True)
        raise typer.Exit(1)
    with path.open("rb") as fh:
        text = fh.read().decode(errors="replace")
        tail = text.splitlines()[-lines:] if lines > 0 else []
        for line in tail:
            typer.echo(line)
        while follow:
            chunk = fh.read()
            if chunk:
                typer.echo(chunk.decode(errors="replace"), nl=False)
            else:
                try:
                    time.sleep(0.2)
                except KeyboardInterrupt:
                    return


def _no_log(name: str, where: Path) -> str:
    """Why there is no log of ``name``: no stack here at all, or which processes there are."""
    try:
        stack = state.running(where)
    except StackError:
        stack = None
    logged = {p.stem for p in (where / "logs").glob("*.log")}
    if stack is None and not logged:
        return no_stack(where)
    names = set(logged)
    if stack is not None:
        names |= {p.name for p in stack.processes()}
        names |= {"supervisor"} if stack.supervisor else set()
    stopped = "" if stack else " (the stack there is not running; these are its last logs)"
    return f"no process {name!r} in the Ferry stack in {where}; its processes: " + (
        ", ".join(sorted(names)) + stopped
    )


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("logs")(logs)
