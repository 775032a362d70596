"""The kill -9 tests' source provider must itself survive kill -9.

Its power states live in files written by the controller process the tests kill
at random points. A torn write (an empty or half-written power.json) made every
later power call of that source fail, so the controller failed VMs for a reason
that no real hypervisor would give it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from controller_harness import FileProvider, make_vm

from ferry.proto.inventory import ProviderType

WRITER = """
import sys
sys.path.insert(0, {here!r})
from pathlib import Path
from controller_harness import FileProvider
src = FileProvider(Path({root!r}))
print("ready", flush=True)
i = 0
while True:
    src._set("id-a", "off" if i % 2 else "on")
    i += 1
"""


def test_power_states_survive_a_kill_during_a_write(tmp_path: Path) -> None:
    # Given a source whose power state a process rewrites as fast as it can
    src = FileProvider.create(tmp_path / "src", [make_vm("id-a", ProviderType.OVIRT)])
    code = WRITER.format(here=str(Path(__file__).parent), root=str(src.root))
    for round_ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"ready")
        time.sleep(0.01 + 0.003 * round_)
        # When it is killed -9 mid-stream
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # Then the state and its log still read, and agree with each other
        assert src.power()["id-a"] in ("on", "off")
        log = src.log()
        assert not log or log[-1] == f"{src.power()['id-a']}:id-a"
