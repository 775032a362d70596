"""Child processes of the stack, known by pid *and* kernel start time.

A pid alone is not an identity: once a process has exited, the kernel may hand
its pid to an unrelated process, and a later ``ferry down`` would signal that
one. The start time in ``/proc/<pid>/stat`` does not repeat for a pid, so a
process counts as ours only while both match; a zombie counts as gone.

Children start in their own sessions: Ctrl-C in a terminal reaches only the
command that started them, which then stops them in order (services before the
bus, so they drain while it is still there).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ferry.runtime.stack import StackError


@dataclass
class Process:
    """A process the stack started; ``port`` is a service's HTTP port or nats' client port."""

    name: str
    pid: int
    started: int  # /proc/<pid>/stat start time: tells our process from a reused pid
    log: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return start_time(self.pid) == self.started


def start_time(pid: int) -> int | None:
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


def tail(path: str | Path, lines: int = 20) -> str:
    """The end of a log, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


_children: dict[int, subprocess.Popen[bytes]] = {}
"""What this process started and has not reaped yet (no zombies while it supervises)."""


class ExitedAtOnce(StackError):
    """The program ended before it could be seen running; ``popen`` holds its exit status."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        super().__init__(f"{name} exited at once:\n{tail(log)}")
        self.popen = popen


def spawn(
    name: str, argv: list[str], log: Path, env: Mapping[str, str], port: int
) -> tuple[Process, subprocess.Popen[bytes]]:
    """Start ``argv`` in its own session, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )
    _children[popen.pid] = popen
    started = start_time(popen.pid)
    if started is None:
        popen.wait()
        raise ExitedAtOnce(name, popen, log)
    return Process(name=name, pid=popen.pid, started=started, log=str(log), port=port), popen


def child(pid: int) -> subprocess.Popen[bytes] | None:
    """The Popen of a child this process started and has not reaped, if ``pid`` is one."""
    return _children.get(pid)


def reap() -> None:
    """Collect the exit status of children that have ended."""
    for pid, popen in list(_children.items()):
        if popen.poll() is not None:
            del _children[pid]


def stop(procs: list[Process], timeout: float) -> list[str]:
    """SIGTERM all, wait up to ``timeout``, SIGKILL the rest; names of those killed."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        reap()
        time.sleep(0.1)
    killed = []
    for proc in procs:
        if proc.alive():
            killed.append(proc.name)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10  # SIGKILL is final unless stuck in the kernel (D state)
    while any(p.alive() for p in procs) and time.monotonic() < deadline:
        reap()
        time.sleep(0.05)
    reap()
    return killed
