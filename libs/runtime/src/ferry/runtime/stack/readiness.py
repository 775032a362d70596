"""Waiting until the stack's processes answer: HTTP probes over loopback.

A service is ready when its ``/readyz`` answers 200 (bus connected, topology
declared, router running); a process that exits while others are waited for
ends the wait at once with its log, rather than after the whole timeout.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence

from ferry.runtime.stack import StackError, processes


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of a GET (None when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except (OSError, ValueError):
        return None


def readiness(proc: processes.Process) -> int | None:
    """The HTTP status of a service's /readyz (None when it does not answer)."""
    return http_status(f"{proc.url}/readyz")


def wait_ready(
    procs: Sequence[processes.Process],
    timeout: float,
    interrupted: Callable[[], bool] = lambda: False,
) -> None:
    """Return once every one answers /readyz with 200; raise :class:`StackError` when one
    exits, the time runs out, or ``interrupted()`` turns true."""
    deadline = time.monotonic() + timeout
    waiting = list(procs)
    while waiting:
        if interrupted():
            raise StackError("interrupted while starting; stopped what had started")
        processes.reap()
        for proc in list(waiting):
            if not proc.alive():
                raise StackError(
                    f"{proc.name} exited during start-up:\n{processes.tail(proc.log, 30)}"
                )
            if readiness(proc) == 200:
                waiting.remove(proc)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(p.name for p in waiting)
            tails = "\n".join(
                f"--- {p.name} ({p.log})\n{processes.tail(p.log, 10)}" for p in waiting
            )
            raise StackError(f"not ready after {timeout:.0f}s: {names}\n{tails}")
        if waiting:
            time.sleep(0.2)
