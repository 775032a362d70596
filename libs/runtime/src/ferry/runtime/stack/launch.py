"""Start, supervise and stop one data dir's stack: the stack machinery put together.

``ferry up`` in a terminal calls these in its own process; ``ferry up --detach``
runs them in a background supervisor process (``python -m ferry.runtime.stack``,
see :func:`main`), recorded in ``stack.json`` so that ``ferry down`` can make it
let go first and a later ``ferry up`` can tell whether one still supervises.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ferry.runtime.stack import StackError, nats, ports, processes, readiness, services
from ferry.runtime.stack.processes import Process
from ferry.runtime.stack.state import STATE_FILE, RestartPolicy, Stack
from ferry.runtime.stack.supervisor import Program, Supervisor

Children = dict[int, subprocess.Popen[bytes]]


def programs(stack: Stack, data_dir: Path) -> list[Program]:
    """How to restart each recorded process: same command line, environment and port."""
    logs = data_dir / "logs"
    config = data_dir / "nats" / "nats.conf"
    nats_log = logs / "nats-server.log"
    found = [
        Program(
            spec.name,
            spec.argv,
            services.environment(data_dir, stack.nats_url, stack.named(spec.name).port),
            logs / f"{spec.name}.log",
            stack.named(spec.name).port,
        )
        for spec in services.SERVICES
    ]
    found.append(
        Program("nats-server", lambda: nats.argv(config, nats_log), os.environ, nats_log, 0)
    )
    return found


def start(
    data_dir: Path,
    *,
    nats_port: int,
    http_port: int,
    timeout: float,
    policy: RestartPolicy,
    foreground: bool,
    interrupted: Callable[[], bool] = lambda: False,
) -> tuple[Stack, Children]:
    """Start nats-server and the services, wait until all are ready; on any failure,
    stop what was started. Returns the stack and the Popen of each child."""
    started: list[Process] = []
    children: Children = {}
    try:
        server, bound = nats.start(data_dir, nats_port, timeout)
        started.append(server)
        _keep(children, server)
        assert bound.monitor is not None  # ferry up always turns monitoring on
        stack = Stack(
            data_dir=str(data_dir),
            nats_url=bound.url,
            nats_monitor=bound.monitor,
            nats=server,
            foreground_pid=os.getpid() if foreground else None,
            policy=policy,
        )
        for spec, port in zip(
            services.SERVICES, ports.service_ports(http_port, len(services.SERVICES)), strict=True
        ):
            log = data_dir / "logs" / f"{spec.name}.log"
            env = services.environment(data_dir, bound.url, port)
            proc, popen = processes.spawn(spec.name, spec.argv(), log, env, port)
            children[proc.pid] = popen
            started.insert(0, proc)
            stack.services.append(proc)
        for proc in stack.processes():
            stack.seen(proc.name)
        stack.save(data_dir)
        readiness.wait_ready(stack.services, timeout, interrupted)
        stack.ready = True
        stack.save(data_dir)
        return stack, children
    except BaseException:
        processes.stop([p for p in started if p.name != "nats-server"], 10)
        processes.stop([p for p in started if p.name == "nats-server"], 10)
        (data_dir / STATE_FILE).unlink(missing_ok=True)
        raise


def _keep(children: Children, proc: Process) -> None:
    popen = processes.child(proc.pid)
    if popen is not None:
        children[proc.pid] = popen


def stop(stack: Stack, timeout: float) -> list[str]:
    """Services first (they drain while the bus is still up), nats-server last."""
    killed = processes.stop(stack.services, timeout)
    killed += processes.stop([stack.nats], timeout)
    return killed


RELEASE = signal.SIGUSR1
"""Asks a supervisor to let go of the stack (and nothing else); `ferry down` sends it."""


def release(stack: Stack, timeout: float = 15.0) -> bool:
    """Make the stack's supervisor stop supervising and wait until it has exited;
    SIGKILL after ``timeout``. Whether one was running."""
    supervisor = stack.supervisor
    if supervisor is None or not supervisor.alive():
        return False
    os.kill(supervisor.pid, RELEASE)
    deadline = time.monotonic() + timeout
    while supervisor.alive() and time.monotonic() < deadline:
        processes.reap()
        time.sleep(0.05)
    if supervisor.alive():
        processes.stop([supervisor], 0)
    return True


def spawn_supervisor(
    data_dir: Path,
    adopt: bool,
    nats_port: int,
    http_port: int,
    timeout: float,
    policy: RestartPolicy,
) -> subprocess.Popen[bytes]:
    """The background supervisor of ``ferry up --detach``, in its own session."""
    argv = [sys.executable, "-m", "ferry.runtime.stack", "--data-dir", str(data_dir)]
    argv += ["--adopt"] if adopt else []
    argv += ["--nats-port", str(nats_port), "--http-port", str(http_port)]
    argv += ["--timeout", str(timeout), *policy_args(policy)]
    log = data_dir / "logs" / "supervisor.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )


def policy_args(policy: RestartPolicy) -> list[str]:
    return [
        "--restart-delay", str(policy.delay),
        "--restart-max-delay", str(policy.max_delay),
        "--min-uptime", str(policy.min_uptime),
        "--crash-loop-after", str(policy.crash_loop_after),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """The detached supervisor: start the stack (or adopt the recorded one), supervise it
    until asked to let go. Errors go to stderr, which is the supervisor's log."""
    parser = argparse.ArgumentParser(prog="python -m ferry.runtime.stack")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--adopt", action="store_true")
    parser.add_argument("--nats-port", type=int, default=0)
    parser.add_argument("--http-port", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--restart-delay", type=float, default=RestartPolicy.delay)
    parser.add_argument("--restart-max-delay", type=float, default=RestartPolicy.max_delay)
    parser.add_argument("--min-uptime", type=float, default=RestartPolicy.min_uptime)
    parser.add_argument("--crash-loop-after", type=int, default=RestartPolicy.crash_loop_after)
    args = parser.parse_args(argv)
    policy = RestartPolicy(
        args.restart_delay, args.restart_max_delay, args.min_uptime, args.crash_loop_after
    )
    signalled: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT, RELEASE):
        signal.signal(sig, lambda signum, _frame: signalled.append(signum))
    data_dir: Path = args.data_dir
    try:
        if args.adopt:
            stack = Stack.load(data_dir)
            if stack is None:
                raise StackError(f"no stack recorded in {data_dir} to adopt")
            children: Children = {}
        else:
            stack, children = start(
                data_dir,
                nats_port=args.nats_port,
                http_port=args.http_port,
                timeout=args.timeout,
                policy=policy,
                foreground=False,
                interrupted=lambda: bool(signalled),
            )
        supervisor = Supervisor(stack, data_dir, programs(stack, data_dir), children)
    except StackError as error:
        print(f"supervisor: {error}", file=sys.stderr, flush=True)
        return 1
    supervisor.run(lambda: bool(signalled))
    return 0
