"""The kill -9 tests' source provider must itself survive kill -9.

Its power states live in files written by the controller process the tests kill
at random points. A torn write (an empty or half-written power.json) made every
later power call of that source fail, so the controller failed VMs for a reason
that no real hypervisor would give it.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from controller_harness import FileProvider, make_vm

from ferry.proto.inventory import ProviderType


def _writer(root: Path) -> int:
    """A forked child rewriting the power state as fast as it can (no interpreter start:
    the kill lands within milliseconds of the first write); its pid once it writes."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(ready_r)
            src = FileProvider(root)
            os.write(ready_w, b"r")
            i = 0
            while True:
                src._set("id-a", "off" if i % 2 else "on")
                i += 1
        finally:
            os._exit(1)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)
    return pid


def test_power_states_survive_a_kill_during_a_write(tmp_path: Path) -> None:
    # Given a source whose power state a process rewrites as fast as it can
    src = FileProvider.create(tmp_path / "src", [make_vm("id-a", ProviderType.OVIRT)])
    for round_ in range(20):
        pid = _writer(src.root)
        time.sleep(0.01 + 0.003 * round_)
        # When it is killed -9 mid-stream
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        # Then the state and its log still read, and agree with each other
        assert src.power()["id-a"] in ("on", "off")
        log = src.log()
        assert not log or log[-1] == f"{src.power()['id-a']}:id-a"
