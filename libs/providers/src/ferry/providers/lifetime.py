"""Helper processes that do not outlive the service that started them.

A service killed with -9 runs no clean-up: whatever it started (virt-v2v and its
qemu-nbd and appliance, a copy workload, a provider's NBD server, guestfish) would
go on, re-parented to init, still holding files and doing work a restarted
service does again. Two guards, used together:

- :func:`die_with_parent`: the child asks the kernel for a signal when its parent
  dies (``PR_SET_PDEATHSIG``), SIGTERM by default so tools such as virt-v2v can
  clean up on the way out (it does end; its own qemu-nbd may not);
- a session record (:func:`record` / :func:`kill_recorded`): a child started as a
  session leader is written down as pid and kernel start time, and a later sweep
  kills every process still in that session, even after the leader itself died,
  without touching a process that merely reuses the pid.

Not for processes meant to outlive a service restart (the local platform's VM
QEMU): those are found again, not tied to their starter.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable
from pathlib import Path

SESSION_FILE = ".ferry-session"  # where a workload's work directory records its session
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved here: a child between fork and exec must not load anything


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``sig`` when the process that started it dies.

    The signal follows the thread that forked; spawn from the event loop's thread.
    """
    parent = os.getpid()

    def arm() -> None:
        _prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), sig)

    return arm


def chained(*steps: Callable[[], None] | None) -> Callable[[], None]:
    """One ``preexec_fn`` running ``steps`` in order (None skipped), e.g. a parent-death
    signal and resource limits for the same child."""
    present = [step for step in steps if step is not None]

    def run() -> None:
        for step in present:
            step()

    return run


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot); None when gone."""
    fields = _fields(pid)
    return int(fields[19]) if fields else None


def _fields(pid: int) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (which may hold spaces)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def record(path: Path, leader: int) -> None:
    """Write down session leader ``leader`` (pid and start time) in ``path``."""
    started = start_time(leader)
    if started is not None:
        path.write_text(f"{leader} {started}\n")


def session_members(leader: int, started: int) -> list[int]:
    """Live processes of the session ``leader`` led, started no earlier than it was.

    When the pid now names a newer process (the leader died, the pid was reused),
    only processes started before that one can be the old session's.
    """
    now = start_time(leader)
    before = now if now is not None and now != started else None
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        fields = _fields(int(entry))
        if not fields or fields[0] in ("Z", "X"):
            continue
        born = int(fields[19])
        if int(fields[3]) == leader and born >= started and (before is None or born < before):
            found.append(int(entry))
    return sorted(found)


def kill_recorded(path: Path) -> list[int]:
    """SIGKILL what is left of the session recorded in ``path``; the pids killed."""
    try:
        leader, started = (int(x) for x in path.read_text().split())
    except (OSError, ValueError):
        return []
    killed = session_members(leader, started)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return killed
