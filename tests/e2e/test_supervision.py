"""``ferry up`` supervises its stack: restarts, adoption by a new supervisor, crash loops.

Real processes as a user runs them (``ferry up --detach`` in a temporary data
dir, free ports); faults are real signals. The restart delays are shortened
with ``ferry up``'s own options so the crash loop is over in seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

SERVICES = ["migration-controller", "volume-service", "conversion-service", "vm-service"]
QUICK = ["--restart-delay", "0.2", "--restart-max-delay", "1", "--min-uptime", "10"]


def ferry(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def state(data_dir: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((data_dir / "stack.json").read_text())
    return loaded


def pid_of(data_dir: Path, name: str) -> int:
    now = state(data_dir)
    procs = [now["nats"], *now["services"]]
    return int(next(p["pid"] for p in procs if p["name"] == name))


def until(what: str, done: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def stack_processes(data_dir: Path) -> dict[str, list[int]]:
    """Every live process of this data dir, by what it runs (from /proc, not stack.json)."""
    found: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not alive(int(entry.name)):
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            environ = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        mine = f"FERRY_DATA_DIR={data_dir}" in environ or any(str(data_dir) in a for a in argv)
        if not mine:
            continue
        if argv[0].endswith("nats-server"):
            found.setdefault("nats-server", []).append(int(entry.name))
        elif "-m" in argv and argv[argv.index("-m") + 1].startswith("ferry."):
            module = argv[argv.index("-m") + 1]
            if module == "ferry.runtime.stack":
                found.setdefault("supervisor", []).append(int(entry.name))
            elif module != "ferry.cli.main":
                found.setdefault(module, []).append(int(entry.name))
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = (tmp_path / "ferry").resolve()
    yield path
    if (path / "stack.json").exists():
        ferry("down", "--data-dir", str(path), "--timeout", "10")


def test_killed_processes_come_back_and_a_killed_supervisor_is_adopted(data_dir: Path) -> None:
    # Given a detached stack
    up = ferry("up", "--detach", "--data-dir", str(data_dir), *QUICK)
    assert up.returncode == 0, up.stdout + up.stderr
    first = state(data_dir)
    supervisor = first["supervisor"]["pid"]
    assert stack_processes(data_dir)["supervisor"] == [supervisor]

    # When a service and the nats-server are killed with SIGKILL
    for name in ("volume-service", "nats-server"):
        old = pid_of(data_dir, name)
        os.kill(old, signal.SIGKILL)
        until(f"{name} restarted", lambda n=name, o=old: pid_of(data_dir, n) != o)  # type: ignore[misc]

    # Then both are back and ready, and `ferry status` shows the restart and the signal
    until("all ready", lambda: ferry("status", "--data-dir", str(data_dir)).returncode == 0)
    status = ferry("status", "--data-dir", str(data_dir)).stdout
    for name in ("volume-service", "nats-server"):
        row = next(line for line in status.splitlines() if line.strip().startswith(name))
        assert row.split()[3] == "1" and "signal SIGKILL" in row, status
    assert "signal SIGKILL" in ferry("logs", "supervisor", "--data-dir", str(data_dir)).stdout

    # When the supervisor itself is killed
    os.kill(supervisor, signal.SIGKILL)
    until("the supervisor gone", lambda: not alive(supervisor))
    before = {p["name"]: p["pid"] for p in [state(data_dir)["nats"], *state(data_dir)["services"]]}
    assert "DOWN" in ferry("status", "--data-dir", str(data_dir)).stdout

    # And `ferry up` runs again
    again = ferry("up", "--detach", "--data-dir", str(data_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Adopted" in again.stdout

    # Then it supervises the same processes, with no duplicate started
    after = state(data_dir)
    assert {p["name"]: p["pid"] for p in [after["nats"], *after["services"]]} == before
    running = stack_processes(data_dir)
    assert running["supervisor"] == [after["supervisor"]["pid"]] != [supervisor]
    assert running["nats-server"] == [before["nats-server"]]
    for name in SERVICES:
        assert running[f"ferry.{name.replace('-', '_')}"] == [before[name]], (name, running)
    assert after["supervision"]["volume-service"]["restarts"] == 1  # history kept

    # And the new supervisor restarts what is killed next
    old = before["vm-service"]
    os.kill(old, signal.SIGKILL)
    until("vm-service restarted", lambda: pid_of(data_dir, "vm-service") != old)

    # When the stack is taken down
    down = ferry("down", "--data-dir", str(data_dir))

    # Then the supervisor went first and nothing was restarted behind `ferry down`'s back
    assert down.returncode == 0, down.stderr
    time.sleep(1.5)
    assert stack_processes(data_dir) == {}


def test_a_service_that_cannot_start_is_left_down_with_its_reason(data_dir: Path) -> None:
    # Given a detached stack that gives up after five fast failures
    up = ferry("up", "--detach", "--data-dir", str(data_dir), *QUICK, "--crash-loop-after", "5")
    assert up.returncode == 0, up.stdout + up.stderr
    supervisor = state(data_dir)["supervisor"]["pid"]
    vm = next(s for s in state(data_dir)["services"] if s["name"] == "vm-service")
    # (up longer than --min-uptime, so the kill below is not a fast failure itself)
    until(
        "a long run",
        lambda: time.time() - state(data_dir)["supervision"]["vm-service"]["since"] > 10.5,
    )

    # When vm-service dies and something else takes its port, so every start fails
    os.kill(supervisor, signal.SIGSTOP)  # so the port is taken before it restarts
    blocker = socket.socket()
    try:
        os.kill(vm["pid"], signal.SIGKILL)
        until("vm-service gone", lambda: not alive(vm["pid"]))
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", vm["port"]))
        blocker.listen()
        os.kill(supervisor, signal.SIGCONT)
        until(
            "the supervisor to give up",
            lambda: state(data_dir)["supervision"]["vm-service"]["health"] == "gave-up",
            timeout=90,
        )
        time.sleep(2)

        # Then it was restarted after the kill, failed at start five times, and was left down…
        seen = state(data_dir)["supervision"]["vm-service"]
        assert seen["restarts"] == 5, seen
        assert pid_of(data_dir, "vm-service") not in stack_processes(data_dir).get(
            "ferry.vm_service", []
        )

        # …and `ferry status` says it is left down, why, and the end of its log
        status = ferry("status", "--data-dir", str(data_dir))
        assert status.returncode == 1
        row = next(line for line in status.stdout.splitlines() if "vm-service" in line)
        assert "GAVE UP" in row and "exit" in row, status.stdout
        assert "crash loop: 5 fast failures" in status.stdout
        assert str(vm["port"]) in status.stdout.split("crash loop", 1)[1], status.stdout
        notes = ferry("logs", "supervisor", "--data-dir", str(data_dir)).stdout
        assert '"event": "gave up"' in notes and '"process": "vm-service"' in notes
        logged = ferry("logs", "vm-service", "--data-dir", str(data_dir), "-n", "5")
        assert logged.returncode == 0 and logged.stdout.strip()
    finally:
        blocker.close()
        os.kill(supervisor, signal.SIGCONT)
    # and the rest of the stack still runs
    assert all(alive(s["pid"]) for s in state(data_dir)["services"] if s["name"] != "vm-service")
