"""``<data>/stack.json``: what runs in a local stack, written by one process, read by others.

``ferry up`` (or the supervisor it starts in the background) writes it; ``ferry
status``, ``ferry down``, ``ferry logs`` and a later ``ferry up`` read it. It
holds each process's pid *and* kernel start time (so a pid the kernel reused is
never signalled), the ports, the supervisor's own identity, the restart policy
the stack runs under (so a supervisor that adopts the stack restarts processes
as the first one did), and per process what supervision has seen: restarts, the
last exit, since when it runs, and why it was given up.

Writes replace the file atomically, so a reader never sees half of one. The
lock serialises ``ferry up`` and ``ferry down``; the supervisor writes without
it, because ``ferry down`` holds the lock while it waits for the supervisor to go.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ferry.runtime.stack import StackError
from ferry.runtime.stack.processes import Process

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
STATE_VERSION = 2


class Health(StrEnum):
    """What supervision says about one process."""

    RUNNING = "running"
    BACKOFF = "backoff"  # exited; restarted when its delay has passed
    GAVE_UP = "gave-up"  # crash loop: left down until `ferry down` / `ferry up`


@dataclass
class Supervision:
    """One process as the supervisor has seen it."""

    health: Health = Health.RUNNING
    since: float = field(default_factory=time.time)  # wall time of the current start
    restarts: int = 0
    last_exit: str | None = None  # "exit 3", "signal SIGKILL", or "gone" for an adopted one
    reason: str = ""  # when given up: the exits and the tail of its log


@dataclass(frozen=True)
class RestartPolicy:
    """How the supervisor restarts a process that ended; ``ferry install-service`` maps
    the same numbers onto systemd's ``Restart*=`` settings."""

    delay: float = 0.5  # before the first restart
    max_delay: float = 30.0  # the cap of the doubling delay
    min_uptime: float = 10.0  # a run shorter than this is a fast failure
    crash_loop_after: int = 5  # consecutive fast failures before giving up

    def backoff(self, failures: int) -> float:
        """The delay before restart number ``failures`` of a row of failures (from 1)."""
        return float(min(self.max_delay, self.delay * 2 ** max(0, failures - 1)))


@dataclass
class Stack:
    """What runs in one data dir; stored as ``<data>/stack.json``."""

    data_dir: str
    nats_url: str
    nats_monitor: str
    nats: Process
    services: list[Process] = field(default_factory=list)
    nats_peers: list[Process] = field(default_factory=list)  # nodes 2..N of --nats-cluster
    created: float = field(default_factory=time.time)
    foreground_pid: int | None = None  # the `ferry up` supervising in a terminal
    supervisor: Process | None = None
    ready: bool = False  # every service answered /readyz once after `ferry up` started it
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    supervision: dict[str, Supervision] = field(default_factory=dict)
    version: int = STATE_VERSION

    def processes(self) -> list[Process]:
        return [*self.services, self.nats, *self.nats_peers]

    def nats_nodes(self) -> list[Process]:
        """The nats-server processes: node 1, then the cluster's other nodes."""
        return [self.nats, *self.nats_peers]

    def named(self, name: str) -> Process:
        for proc in self.processes():
            if proc.name == name:
                return proc
        raise KeyError(name)

    def seen(self, name: str) -> Supervision:
        return self.supervision.setdefault(name, Supervision())

    def save(self, data_dir: Path) -> None:
        path = data_dir / STATE_FILE
        tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")  # writers never share one
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
        supervisor = raw.get("supervisor")
        return cls(
            data_dir=raw["data_dir"],
            nats_url=raw["nats_url"],
            nats_monitor=raw["nats_monitor"],
            nats=Process(**raw["nats"]),
            services=[Process(**p) for p in raw["services"]],
            nats_peers=[Process(**p) for p in raw.get("nats_peers", [])],
            created=raw.get("created", 0.0),
            foreground_pid=raw.get("foreground_pid"),
            supervisor=Process(**supervisor) if supervisor else None,
            ready=raw.get("ready", True),
            policy=RestartPolicy(**raw.get("policy", {})),
            supervision={
                name: Supervision(**{**seen, "health": Health(seen["health"])})
                for name, seen in raw.get("supervision", {}).items()
            },
            version=raw.get("version", STATE_VERSION),
        )

    def supervised(self) -> bool:
        return self.supervisor is not None and self.supervisor.alive()


def running(data_dir: Path) -> Stack | None:
    """The stack recorded in ``data_dir`` if its supervisor or any process still runs."""
    stack = Stack.load(data_dir)
    if stack is None:
        return None
    if stack.supervised() or any(p.alive() for p in stack.processes()):
        return stack
    (data_dir / STATE_FILE).unlink(missing_ok=True)  # stale: everything has exited
    return None


@contextlib.contextmanager
def locked(data_dir: Path, wait: float = 5.0) -> Iterator[None]:
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
