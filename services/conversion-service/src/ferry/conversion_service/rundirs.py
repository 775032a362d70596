"""A conversion's run directories: claimed by their service, swept when it died.

Each run works in ``ferry-v2v-*`` directories under the service's ``work_dir`` and
``large_tmp_dir``, claimed with the owning process's pid and kernel start time. The
next conversion-service to start on the host removes the runs of dead owners (after
killing what is left of their process session) and never touches a live replica's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from ferry.providers import lifetime

log = logging.getLogger(__name__)

# Locally TMPDIR is the run's work directory's tmp/ while its path is this short; a
# longer work_dir gets a private directory in the system's temp dir instead, linked
# from the work directory (_TMP_LINK) so that the sweep removes it with the run.
_SHORT_TMPDIR = 48
_TMP_LINK = "tmp-elsewhere"

_OWNER_FILE = ".ferry-owner"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), or None if it is gone.

    A pid alone can be reused; pid plus start time names one process for good.
    """
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat_line.rsplit(")", 1)[1].split()[19]


def claim(directory: Path) -> Path:
    """Mark ``directory`` as this process's run (pid and start time) for the sweep."""
    (directory / _OWNER_FILE).write_text(f"{os.getpid()} {_process_start(os.getpid())}\n")
    return directory


def sweep_orphans(*folders: Path) -> list[Path]:
    """Remove run directories whose owning service process no longer exists.

    A conversion-service killed with -9 cannot clean up after itself; the next one
    to start on the host does, without touching the runs of replicas still alive:
    what is left of the run's process session (virt-v2v's qemu-nbd, nbdkit, the
    appliance) is killed first, then its directory removed.
    """
    removed = []
    for folder in folders:
        for run in folder.glob("ferry-v2v-*"):
            try:
                pid, started = (run / _OWNER_FILE).read_text().split()
            except (OSError, ValueError):
                continue  # not (yet) claimed: leave it alone
            if _process_start(int(pid)) != started:
                killed = lifetime.kill_recorded(run / lifetime.SESSION_FILE)
                if killed:
                    log.warning("killed leftover processes of %s: %s", run, killed)
                with contextlib.suppress(OSError):
                    shutil.rmtree(os.readlink(run / _TMP_LINK), ignore_errors=True)
                shutil.rmtree(run, ignore_errors=True)
                removed.append(run)
    return removed


def scratch_dir(workdir: Path) -> Path:
    """virt-v2v's TMPDIR for a local run: ``workdir/tmp``, or, when that path is too long
    for the Unix sockets its helpers bind under it (108 bytes with their own names), a
    private directory in the system's temp dir, linked from ``workdir`` for the sweep."""
    inside = workdir / "tmp"
    if len(str(inside)) <= _SHORT_TMPDIR:
        inside.mkdir(mode=0o700)
        return inside
    elsewhere = Path(tempfile.mkdtemp(prefix="ferry-v2v-t-"))
    (workdir / _TMP_LINK).symlink_to(elsewhere)
    return elsewhere
