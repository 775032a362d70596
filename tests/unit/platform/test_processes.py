"""Stopping virt-v2v means stopping everything it started.

These run real (tiny) process trees shaped like virt-v2v's: a helper in the
same process group (nbdkit), and one that moved to a process group of its own
the way libguestfs starts QEMU. No virt-v2v needed, so they are fast.
"""

from __future__ import annotations

import asyncio
import io
import os
import sys
import textwrap
from pathlib import Path

import pytest

from ferry.platform import factory
from ferry.platform.local import processes as process
from ferry.platform.local.processes import LocalWorkloads
from ferry.platform.settings import PlatformSettings
from ferry.platform.workloads import Workload, WorkloadError, WorkloadTimedOut

# Prints the pids of its helpers, then waits; like virt-v2v with nbdkit and qemu.
TREE = textwrap.dedent(
    """
    import os, subprocess, sys, time
    nbdkit = subprocess.Popen(["sleep", "300"])
    qemu = subprocess.Popen(["sleep", "301"], preexec_fn=lambda: os.setpgid(0, 0))
    print("pids", nbdkit.pid, qemu.pid, flush=True)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


class Helpers:
    """Collects the helper pids the tree prints."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.seen = asyncio.Event()

    async def __call__(self, line: str) -> None:
        if line.startswith("pids "):
            self.pids = [int(p) for p in line.split()[1:]]
            self.seen.set()


async def test_time_limit_kills_the_whole_tree() -> None:
    # Given a tree whose helpers would run for minutes
    helpers = Helpers()
    log = io.BytesIO()
    # When its time limit passes
    with pytest.raises(WorkloadTimedOut) as raised:
        await process.run(
            [sys.executable, "-c", TREE],
            env=os.environ,
            log_file=log,
            on_line=helpers,
            time_limit=3.0,
            grace=0.5,
        )
    # Then the run fails with the limit, and neither helper survives
    assert raised.value.seconds == 3.0
    assert len(helpers.pids) == 2
    assert not [pid for pid in helpers.pids if alive(pid)]
    assert b"pids" in log.getvalue()


async def test_cancel_kills_the_whole_tree() -> None:
    # Given a running tree
    helpers = Helpers()
    task = asyncio.create_task(
        process.run(
            [sys.executable, "-c", TREE],
            env=os.environ,
            log_file=io.BytesIO(),
            on_line=helpers,
            time_limit=60,
            grace=0.5,
        )
    )
    await asyncio.wait_for(helpers.seen.wait(), 20)
    # When the task is cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Then by the time the cancellation arrives, nothing of the tree is left
    assert not [pid for pid in helpers.pids if alive(pid)]


async def test_helpers_left_after_a_normal_exit_are_swept() -> None:
    # Given a child that exits, leaving a background helper behind
    helpers = Helpers()
    script = "sleep 300 & sleep 301 & echo pids $!; exit 3"
    # When it exits
    status = await process.run(
        ["sh", "-c", script],
        env=os.environ,
        log_file=io.BytesIO(),
        on_line=helpers,
        time_limit=30,
    )
    # Then its status is reported and its helper is gone too
    assert status == 3
    assert helpers.pids and not alive(helpers.pids[0])


async def test_separate_stdout_keeps_the_result_out_of_the_log(tmp_path) -> None:
    # Given a tool whose result is its stdout and whose chatter is stderr
    log = io.BytesIO()
    with (tmp_path / "out").open("w+b") as out:
        # When it runs with stdout captured
        status = await process.run(
            ["sh", "-c", "echo '<xml/>'; echo 'libguestfs: chatter' >&2"],
            env=os.environ,
            log_file=log,
            time_limit=30,
            stdout=out,
        )
        out.seek(0)
        result = out.read()
    # Then the result and the log are apart
    assert status == 0
    assert result == b"<xml/>\n"
    assert log.getvalue() == b"libguestfs: chatter\n"


def test_members_include_descendants_in_their_own_process_group() -> None:
    # Given this test process (which is not a session leader of its children)
    # Then members() of a pid that leads nothing is just its descendants, never us
    assert os.getpid() not in process.members(os.getpid())


# -- the workload seam ------------------------------------------------------------------


async def test_a_local_workload_streams_its_lines_and_returns_its_status(tmp_path) -> None:
    # Given a workload that prints two lines and exits 3, with a volume that exists
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"")
    workload = Workload(
        name="echo",
        argv=[sys.executable, "-c", "print('one'); print('two'); raise SystemExit(3)"],
        env={"PATH": os.environ["PATH"]},
        volumes={"disk-1": str(disk)},
        workdir=str(tmp_path),
        time_limit=30,
    )
    lines: list[str] = []

    async def on_line(line: str) -> None:
        lines.append(line)

    # When the local platform runs it
    status = await LocalWorkloads().run_workload(workload, io.BytesIO(), on_line)

    # Then the lines came back as they came, and the status is the workload's
    assert (status, lines) == (3, ["one", "two"])


async def test_a_local_workload_whose_volume_is_missing_does_not_start(tmp_path) -> None:
    workload = Workload(
        name="convert",
        argv=["true"],
        volumes={"disk-1": str(tmp_path / "absent.img")},
        time_limit=30,
    )
    with pytest.raises(WorkloadError, match="disk-1"):
        await LocalWorkloads().run_workload(workload, io.BytesIO())


async def test_the_kubernetes_platform_without_a_conversion_image_says_so() -> None:
    # Given the kubernetes platform with no conversion image (it never connects)
    platform = factory.create(PlatformSettings(kind="kubernetes"), data_dir=Path("unused"))
    workload = Workload(name="full-conversion", argv=["virt-v2v"], time_limit=30)

    # When a conversion is run on it, then it fails at once and says why
    with pytest.raises(WorkloadError, match="conversion_image is not set"):
        await platform.run_workload(workload, io.BytesIO())


async def test_local_secret_files_are_private_to_the_run_and_removed_after(tmp_path: Path) -> None:
    # Given a workload with a secret file that it only reports the mode and size of
    secrets = tmp_path / "secrets"
    workload = Workload(
        name="reads-secret",
        argv=["sh", "-c", f"stat -c '%a %s' {secrets}/password"],
        time_limit=30,
        secret_files={"password": b"hunter2"},
        secret_dir=str(secrets),
    )
    log = io.BytesIO()

    # When it runs
    status = await LocalWorkloads().run_workload(workload, log)

    # Then the file was there for it, readable by this user only, and is gone afterwards
    assert status == 0
    assert log.getvalue().split() == [b"600", b"7"]
    assert not (secrets / "password").exists()
