"""The stack's supervisor over real child processes (small programs, no bus).

Each test breaks one guarantee when its line is broken: a killed process comes
back, a crash loop is left down with its reason, an adopted process is not
started twice, and the delays double up to their cap.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ferry.runtime.stack import processes
from ferry.runtime.stack.state import Health, RestartPolicy, Stack
from ferry.runtime.stack.supervisor import Program, Supervisor

FAST = RestartPolicy(delay=0.05, max_delay=0.4, min_uptime=2.0, crash_loop_after=5)


def _program(tmp: Path, name: str, script: str) -> Program:
    return Program(
        name,
        lambda: [sys.executable, "-c", script],
        dict(os.environ),
        tmp / "logs" / f"{name}.log",
        0,
    )


SLEEPER = "import time; print('up', flush=True); time.sleep(60)"
FAILING = "import sys; print('boom: cannot bind 127.0.0.1:1', flush=True); sys.exit(3)"


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Callable[[str], tuple[Stack, Supervisor]]]:
    """A stack of two programs ('sleeper' as nats, plus one service) under a supervisor."""
    stacks: list[Stack] = []

    def make(script: str) -> tuple[Stack, Supervisor]:
        programs = [_program(tmp_path, "svc", script), _program(tmp_path, "bus", SLEEPER)]
        children = {}
        procs = []
        for program in programs:
            try:
                proc, popen = processes.spawn(program.name, program.argv(), program.log, {}, 0)
            except processes.ExitedAtOnce as ended:  # a failing program on a loaded machine
                popen = ended.popen
                proc = processes.Process(program.name, popen.pid, -1, str(program.log), 0)
            children[proc.pid] = popen
            procs.append(proc)
        stack = Stack(str(tmp_path), "", "", nats=procs[1], services=[procs[0]], policy=FAST)
        stacks.append(stack)
        return stack, Supervisor(stack, tmp_path, programs, children)

    yield make
    for stack in stacks:
        processes.stop(stack.processes(), 2)


def _until(what: str, supervisor: Supervisor, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if supervisor.check():
            supervisor.stack.save(supervisor.data_dir)
        time.sleep(0.02)


def test_delays_double_up_to_the_cap() -> None:
    policy = RestartPolicy(delay=0.5, max_delay=30.0)
    assert [policy.backoff(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_killed_process_is_restarted_and_its_signal_recorded(
    tmp_path: Path, made: Callable[[str], tuple[Stack, Supervisor]]
) -> None:
    # Given a supervised process
    stack, supervisor = made(SLEEPER)
    old = stack.services[0]

    # When it is killed with SIGKILL
    os.kill(old.pid, signal.SIGKILL)
    _until("a restart", supervisor, lambda: stack.services[0].pid != old.pid, 10)

    # Then a new process runs in its place, and the restart and the signal are recorded
    assert stack.services[0].alive() and not old.alive()
    seen = stack.supervision["svc"]
    assert (seen.health, seen.restarts, seen.last_exit) == (Health.RUNNING, 1, "signal SIGKILL")
    saved = Stack.load(tmp_path)
    assert saved is not None and saved.services[0].pid == stack.services[0].pid
    assert saved.supervision["svc"].restarts == 1
    notes = [json.loads(line) for line in supervisor.log.read_text().splitlines()]
    assert {"event": "exited", "process": "svc", "exit": "signal SIGKILL"}.items() <= notes[
        0
    ].items()
    assert notes[1]["event"] == "restarted"
    # and the other process was left alone
    assert stack.supervision["bus"].restarts == 0


def test_a_process_that_fails_at_start_five_times_is_left_down_with_its_reason(
    tmp_path: Path, made: Callable[[str], tuple[Stack, Supervisor]]
) -> None:
    # Given a program that exits with 3 as soon as it starts
    stack, supervisor = made(FAILING)

    # When the supervisor has watched it for a while
    _until("giving up", supervisor, lambda: stack.seen("svc").health is Health.GAVE_UP, 15)
    time.sleep(0.5)
    for _ in range(20):
        supervisor.check()
        time.sleep(0.02)

    # Then it ran five times (the start and four restarts) and no more
    runs = (tmp_path / "logs" / "svc.log").read_text().count("boom")
    assert runs == 5
    seen = stack.supervision["svc"]
    assert seen.restarts == 4
    assert seen.last_exit == "exit 3"
    # and the reason names the crash loop, the exits and the log's last lines
    assert "crash loop: 5 fast failures" in seen.reason
    assert "exit 3, exit 3" in seen.reason
    assert "boom: cannot bind" in seen.reason
    gave_up = [json.loads(x) for x in supervisor.log.read_text().splitlines()][-1]
    assert gave_up["event"] == "gave up" and "boom" in gave_up["log_tail"]
    saved = Stack.load(tmp_path)
    assert saved is not None and saved.supervision["svc"].health is Health.GAVE_UP


def test_a_new_supervisor_adopts_without_starting_duplicates(
    tmp_path: Path, made: Callable[[str], tuple[Stack, Supervisor]]
) -> None:
    # Given a supervised stack whose supervisor has gone (only stack.json remains)
    stack, first = made(SLEEPER)
    before = [(p.name, p.pid, p.started) for p in stack.processes()]
    recorded = Stack.load(tmp_path)
    assert recorded is not None
    programs = list(first.slots[name].program for name in ("svc", "bus"))

    # When a new supervisor adopts it and looks
    second = Supervisor(recorded, tmp_path, programs)
    for _ in range(10):
        assert not second.check()
        time.sleep(0.02)

    # Then it started nothing: the same processes, one run of each program
    assert [(p.name, p.pid, p.started) for p in recorded.processes()] == before
    assert (tmp_path / "logs" / "svc.log").read_text().count("up") == 1
    assert recorded.supervisor is not None and recorded.supervisor.pid == os.getpid()

    # And when an adopted process is killed, it restarts it
    os.kill(recorded.services[0].pid, signal.SIGKILL)
    _until("a restart", second, lambda: recorded.services[0].pid != before[0][1], 10)
    assert recorded.supervision["svc"].last_exit is not None
    assert recorded.supervision["svc"].last_exit.startswith("gone")
    assert recorded.supervision["svc"].restarts == 1


def test_a_restart_that_ends_before_it_is_seen_running_keeps_its_exit_status(
    tmp_path: Path,
    made: Callable[[str], tuple[Stack, Supervisor]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a crash-looping program whose restarts end before the supervisor can read
    # their start (as on a loaded machine: each is a zombie by then)
    stack, supervisor = made(FAILING)
    known = {p.pid for p in stack.processes()} | {os.getpid()}
    seen_running = processes.start_time
    monkeypatch.setattr(
        processes, "start_time", lambda pid: seen_running(pid) if pid in known else None
    )

    # When the supervisor has watched it until it gives up
    _until("giving up", supervisor, lambda: stack.seen("svc").health is Health.GAVE_UP, 15)

    # Then every run's exit status is its own, not an unknown one
    seen = stack.supervision["svc"]
    assert seen.last_exit == "exit 3"
    assert "exit 3, exit 3, exit 3, exit 3, exit 3" in seen.reason, seen.reason
    assert (tmp_path / "logs" / "svc.log").read_text().count("boom") == 5
