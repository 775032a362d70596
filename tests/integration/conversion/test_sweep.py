"""A killed conversion-service's virt-v2v session is killed by the next one's sweep.

virt-v2v runs as a session leader in its run directory, which records the session
(pid and start time). When the service dies with -9, helpers of that session
(qemu-nbd serving the source disk, nbdkit) can outlive virt-v2v itself; the next
service to start on the host kills what is left of the session, then removes the
directory. A run of a live service is left alone.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ferry.conversion_service import rundirs
from ferry.providers import lifetime


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def orphaned_session(run: Path) -> tuple[subprocess.Popen[str], int]:
    """A session leader that started a helper and died, recorded in ``run``."""
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 300 & echo $!; exit 0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lifetime.record(run / lifetime.SESSION_FILE, leader.pid)
    assert leader.stdout is not None
    helper = int(leader.stdout.readline())
    leader.wait()
    return leader, helper


def test_the_sweep_kills_a_dead_services_session_and_spares_a_live_ones(tmp_path: Path) -> None:
    # Given a run of a service that is gone, whose virt-v2v left a helper running
    dead = tmp_path / "ferry-v2v-dead"
    dead.mkdir()
    (dead / rundirs._OWNER_FILE).write_text("999999999 12345\n")
    _, orphan = orphaned_session(dead)
    # And a run of this live service with a helper of its own
    (tmp_path / "ferry-v2v-live").mkdir()
    live = rundirs.claim(tmp_path / "ferry-v2v-live")
    _, kept = orphaned_session(live)
    try:
        # When a conversion-service starts and sweeps
        removed = rundirs.sweep_orphans(tmp_path)
        # Then the dead run's helper is killed and its directory removed
        assert removed == [dead]
        deadline = time.monotonic() + 5
        while alive(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(orphan)
        assert not dead.exists()
        # And the live run keeps its process and its directory
        assert alive(kept) and live.is_dir()
    finally:
        for pid in (orphan, kept):
            subprocess.run(["kill", "-9", str(pid)], check=False, capture_output=True)


def test_a_long_work_dir_gets_a_short_tmpdir_that_the_sweep_removes(tmp_path: Path) -> None:
    # Given a run directory under a long work_dir (pytest's, a deep data dir): virt-v2v's
    # helpers bind Unix sockets under TMPDIR, and a socket path has at most 108 bytes
    deep = tmp_path / ("w" * 60) / "ferry-v2v-deep"
    deep.mkdir(parents=True)
    # When the run's scratch directory is made
    scratch = rundirs.scratch_dir(rundirs.claim(deep))
    # Then it is short enough for those sockets, private, and not inside the run
    assert len(str(scratch)) <= 48 and scratch.is_dir()
    assert scratch.stat().st_mode & 0o777 == 0o700
    # And when the run's owner is dead, the sweep removes it with the run
    (deep / ".ferry-owner").write_text("999999999 12345\n")
    assert rundirs.sweep_orphans(deep.parent) == [deep]
    assert not scratch.exists() and not deep.exists()


def test_a_short_work_dir_keeps_tmpdir_inside_the_run(tmp_path: Path) -> None:
    short = Path(tempfile.mkdtemp(prefix="fv-", dir="/tmp"))
    try:
        assert rundirs.scratch_dir(short) == short / "tmp"
    finally:
        shutil.rmtree(short)
