"""Helpers die with the service that started them, and a recorded session is swept.

Real processes: a stand-in "service" (a Python child) starts a helper the way the
services do, is killed with -9, and the helper must be gone; a session whose
leader died is found by its record and killed, and nothing outside it is.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ferry.providers import lifetime

SERVICE = """
import asyncio, sys
from ferry.providers import lifetime

async def main():
    child = await asyncio.create_subprocess_exec(
        "sleep", "300", preexec_fn=lifetime.die_with_parent() if sys.argv[1] == "tied" else None
    )
    print(child.pid, flush=True)
    await asyncio.sleep(300)

asyncio.run(main())
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def helper_after_kill(mode: str, seconds: float = 5.0) -> tuple[int, bool]:
    service = subprocess.Popen(
        [sys.executable, "-c", SERVICE, mode], stdout=subprocess.PIPE, text=True
    )
    assert service.stdout is not None
    helper = int(service.stdout.readline())
    service.kill()  # kill -9: no clean-up runs in the service
    service.wait()
    return helper, wait_gone(helper, seconds)


def test_a_helper_tied_to_its_service_dies_with_it() -> None:
    # Given a service that started a helper with die_with_parent, killed with -9
    helper, gone = helper_after_kill("tied")
    # Then the helper is gone within seconds
    assert gone, f"helper {helper} outlived its service"


def test_an_untied_helper_outlives_its_service() -> None:
    # The control: without the guard the helper is re-parented and goes on
    helper, gone = helper_after_kill("untied", 1.0)
    try:
        assert not gone
    finally:
        os.kill(helper, signal.SIGKILL)


def test_a_recorded_session_is_killed_after_its_leader_died(tmp_path: Path) -> None:
    # Given a session whose leader started a helper, then died (as virt-v2v leaves qemu-nbd)
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; exit 0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    record = tmp_path / lifetime.SESSION_FILE
    lifetime.record(record, leader.pid)
    assert leader.stdout is not None
    helper = int(leader.stdout.readline())
    leader.wait()
    # And a process outside the session that must not be touched
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        assert alive(helper)
        # When the sweep kills what the record names
        killed = lifetime.kill_recorded(record)
        # Then the helper is gone, and only it
        assert killed == [helper]
        assert wait_gone(helper, 5.0)
        assert alive(bystander.pid)
    finally:
        bystander.kill()
        bystander.wait()


def test_a_record_whose_pid_was_reused_kills_nothing_newer(tmp_path: Path) -> None:
    # Given a live session (its own leader, started here: the test's own session leader
    # may sit outside this pid namespace, as in a container) and a record naming that
    # leader with a start time in the future (as if the pid had been reused by an older
    # process: nothing may match)
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; exec sleep 300"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert leader.stdout is not None
        member = int(leader.stdout.readline())
        started = lifetime.start_time(leader.pid)
        assert started is not None
        record = tmp_path / lifetime.SESSION_FILE
        record.write_text(f"{leader.pid} {started + 10**9}\n")
        # Then the sweep kills nothing, and the session lives on
        assert lifetime.kill_recorded(record) == []
        assert alive(leader.pid) and alive(member)
        # While the true record would have killed both (the control)
        record.write_text(f"{leader.pid} {started}\n")
        assert sorted(lifetime.kill_recorded(record)) == sorted([leader.pid, member])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    # And a missing or garbled record is nothing to kill
    assert lifetime.kill_recorded(tmp_path / "none") == []
    (tmp_path / "bad").write_text("x y\n")
    assert lifetime.kill_recorded(tmp_path / "bad") == []
