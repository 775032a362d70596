"""Keep the stack's processes running: restart what exits, give up on a crash loop.

On one machine nothing plays the kubelet's part, and every guarantee of the bus
(redelivery, leases, resume) is wasted on a service that never comes back. The
supervisor watches each process of the stack (the nats-server included) and,
when one exits or is killed, logs how it ended and starts it again with the same
command line, environment and port, after a delay that doubles with each fast
failure up to a cap (:class:`~ferry.runtime.stack.state.RestartPolicy`). A run
shorter than ``min_uptime`` is a fast failure; after ``crash_loop_after`` of them
in a row the process is left down, and the reason (its exits and the end of its
log) goes to the supervisor's log and ``stack.json``, where ``ferry status``
shows it.

The supervisor is restartable. Everything it knows is in ``stack.json``; a new
one *adopts* the recorded processes (pid and kernel start time must both match)
instead of starting duplicates. An adopted process is not its child, so when
that one ends its exit status is unknowable here and is logged as ``gone``.

Stopping supervision and stopping the stack are separate on purpose: ``ferry
down`` first makes the supervisor let go (so nothing is restarted while the
stack goes down), then stops the processes itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ferry.runtime.stack import StackError, processes
from ferry.runtime.stack.state import Health, Stack, Supervision

LOG_NAME = "supervisor.log"
TAIL_LINES = 15


@dataclass(frozen=True)
class Program:
    """How to (re)start one process of the stack."""

    name: str
    argv: Callable[[], list[str]]  # resolved at each start: a binary may have moved
    env: Mapping[str, str]
    log: Path
    port: int


@dataclass
class _Slot:
    program: Program
    popen: subprocess.Popen[bytes] | None  # None when adopted: not our child
    failures: int = 0  # fast failures in a row
    restart_at: float | None = None
    exits: list[str] = field(default_factory=list)


def describe_exit(returncode: int | None) -> str:
    """``exit 3`` or ``signal SIGKILL``; ``gone`` when the status is unknowable."""
    if returncode is None:
        return "gone (not this supervisor's child: exit status unknown)"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"


class Supervisor:
    """Supervises the processes recorded in ``stack`` (started or adopted) and keeps
    ``stack.json`` current. ``children`` are the Popen objects of those this process
    started; the others are adopted."""

    def __init__(
        self,
        stack: Stack,
        data_dir: Path,
        programs: list[Program],
        children: Mapping[int, subprocess.Popen[bytes]] | None = None,
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.stack = stack
        self.data_dir = data_dir
        self.policy = stack.policy
        self.say = say
        self.log = data_dir / "logs" / LOG_NAME
        self.log.parent.mkdir(parents=True, exist_ok=True)
        children = children or {}
        self.slots: dict[str, _Slot] = {}
        now = time.monotonic()
        for program in programs:
            proc = stack.named(program.name)
            slot = _Slot(program, children.get(proc.pid))
            seen = stack.seen(program.name)
            if slot.popen is None and not proc.alive():
                # Ended while nobody watched (or was given up): `ferry up` asked for it again.
                seen.last_exit = seen.last_exit if seen.health is Health.GAVE_UP else "gone"
                seen.health = Health.BACKOFF
                slot.restart_at = now
            self.slots[program.name] = slot
        me = processes.start_time(os.getpid())
        assert me is not None
        stack.supervisor = processes.Process("supervisor", os.getpid(), me, str(self.log), 0)
        stack.save(data_dir)

    # -- the loop ------------------------------------------------------------------

    def run(self, stopping: Callable[[], bool], interval: float = 0.2) -> None:
        """Check every ``interval`` seconds until ``stopping()``; never stops a process."""
        self.note("supervising", processes=sorted(self.slots))
        while not stopping():
            if self.check():
                self.stack.save(self.data_dir)
            time.sleep(interval)
        self.stack.save(self.data_dir)
        self.note("let go of the stack", processes=sorted(self.slots))

    def check(self) -> bool:
        """One pass over every process; whether anything changed."""
        changed = False
        now = time.monotonic()
        for name, slot in self.slots.items():
            seen = self.stack.seen(name)
            if seen.health is Health.RUNNING and not self._alive(slot, name):
                self._exited(name, slot, seen, now)
                changed = True
            elif (
                seen.health is Health.BACKOFF
                and slot.restart_at is not None
                and now >= slot.restart_at
            ):
                self._restart(name, slot, seen)
                changed = True
        return changed

    def _alive(self, slot: _Slot, name: str) -> bool:
        if slot.popen is not None:
            return slot.popen.poll() is None
        return self.stack.named(name).alive()

    def _exited(self, name: str, slot: _Slot, seen: Supervision, now: float) -> None:
        how = describe_exit(slot.popen.poll() if slot.popen is not None else None)
        uptime = max(0.0, time.time() - seen.since)
        fast = uptime < self.policy.min_uptime
        # Only fast failures count towards a crash loop; a long run starts a new row.
        slot.failures = slot.failures + 1 if fast else 0
        slot.exits = [*slot.exits, how][-self.policy.crash_loop_after :] if fast else []
        seen.last_exit = how
        if fast and slot.failures >= self.policy.crash_loop_after:
            seen.health = Health.GAVE_UP
            slot.restart_at = None
            tail = processes.tail(slot.program.log, TAIL_LINES)
            seen.reason = (
                f"crash loop: {slot.failures} fast failures in a row "
                f"(each under {self.policy.min_uptime:g}s: {', '.join(slot.exits)}); "
                f"not restarted. Last lines of {slot.program.log}:\n{tail}"
            )
            self.note("gave up", process=name, exit=how, failures=slot.failures, log_tail=tail)
            self.say(f"{name} {how}; {seen.reason}")
            return
        delay = self.policy.backoff(max(1, slot.failures))
        seen.health = Health.BACKOFF
        slot.restart_at = now + delay
        self.note("exited", process=name, exit=how, uptime=round(uptime, 1), restart_in=delay)
        self.say(f"{name} ended ({how}) after {uptime:.1f}s; restarting in {delay:g}s")

    def _restart(self, name: str, slot: _Slot, seen: Supervision) -> None:
        program = slot.program
        old = self.stack.named(name)
        seen.since = time.time()
        seen.restarts += 1
        try:
            proc, popen = processes.spawn(
                name, program.argv(), program.log, program.env, program.port
            )
        except (StackError, OSError) as error:
            # one that ended at once is seen exited on the next pass, with its status
            slot.popen = error.popen if isinstance(error, processes.ExitedAtOnce) else None
            seen.health = Health.RUNNING  # counted as a fast exit on the next pass
            old.started = -1  # never alive: the next pass sees it gone
            self.note("start failed", process=name, error=str(error).splitlines()[0])
            return
        slot.popen = popen
        proc.port = old.port
        self._replace(old, proc)
        seen.health = Health.RUNNING
        seen.reason = ""
        self.note("restarted", process=name, pid=proc.pid, restarts=seen.restarts)
        self.say(f"{name} restarted (pid {proc.pid}, restart {seen.restarts})")

    def _replace(self, old: processes.Process, new: processes.Process) -> None:
        if self.stack.nats is old:
            self.stack.nats = new
        elif old in self.stack.nats_peers:
            self.stack.nats_peers[self.stack.nats_peers.index(old)] = new
        else:
            self.stack.services[self.stack.services.index(old)] = new

    # -- what it says --------------------------------------------------------------

    def note(self, event: str, **fields: object) -> None:
        """A JSON line in ``<data>/logs/supervisor.log``."""
        line = {"ts": round(time.time(), 3), "service": "supervisor", "event": event, **fields}
        with self.log.open("a") as out:
            out.write(json.dumps(line) + "\n")
