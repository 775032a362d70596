"""kill -9 each process of a ``ferry up`` stack during one migration; the supervisor heals it.

Unlike ``test_kills.py``, the test restarts nothing: ``ferry up --detach``'s
supervisor must notice each death and start the process again, and the
migration must go on and complete exactly once. Kill points are chosen so no
kill costs a second virt-v2v run (the slow part): step boundaries, the
nats-server while virt-v2v copies the disk, the conversion-service once it is
idle again, and the vm-service while the guest boots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.testing.migration import (
    FLOW3,
    apply_yaml,
    finished,
    guest_ova,
    of_type,
    ova_objects,
    place_ovas,
    start_migration,
)
from ferry.testing.supervised import SupervisedStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
VM = "guest/ferry-test-guest"
Events = list[dict[str, Any]]
EFFECTS = [
    "volume.volumes_created",
    "volume.disks_allocated",
    "conversion.guest_converted",
    "vm.vm_created",
    "vm.vm_running",
]


def step_started(step: str) -> Callable[[Events], bool]:
    return lambda ev: step in [d["step"] for d in of_type(ev, "migration.step_started", VM)]


def stage(text: str) -> Callable[[Events], bool]:
    return lambda ev: any(
        text in d.get("stage", "") for d in of_type(ev, "conversion.progress", VM)
    )


SCHEDULE: list[tuple[str, Callable[[Events], bool]]] = [
    ("volume-service", step_started("CreateDataVolumes")),
    ("migration-controller", step_started("ConvertGuest")),
    ("nats-server", stage("Copying disk")),
    ("conversion-service", step_started("CreateVM")),
    ("vm-service", lambda ev: bool(of_type(ev, "vm.vm_starting", VM))),
]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SupervisedStack]:
    stack = SupervisedStack(tmp_path / "stack")
    try:
        yield stack.start()
    finally:
        stack.close()


def test_the_supervisor_heals_every_process_killed_during_a_migration(
    stack: SupervisedStack,
) -> None:
    # Given one VM of the test guest and an audit-stream subscriber
    guest = guest_ova(REPO)
    ova_dir = place_ovas(stack, Path(guest["ova"]), ["guest"])
    apply_yaml(stack, ova_objects(ova_dir, [VM], plan="healed"))
    recorder = stack.record_events("events-1")
    time.sleep(2)

    # When the migration runs and each process is killed with SIGKILL in turn
    start_migration(stack, "healed", "m-healed")
    for number, (name, when) in enumerate(SCHEDULE, 1):
        stack.wait_for(f"the moment to kill {name}", when, recorder, timeout=900)
        old = stack.kill(name)
        # Then the supervisor brings it back, without help, within seconds
        new = stack.wait_restarted(name, old, timeout=60)
        print(f"{name}: pid {old} killed, {new} back")
        if name == "nats-server":
            recorder.stop()  # a fresh subscriber, from the start of the stream
            recorder = stack.record_events(f"events-{number + 1}")

    # And the migration completes, each step once, each effect once
    done = stack.wait_for(
        "the migration to end", lambda ev: finished(ev, "m-healed"), recorder, timeout=1200
    )
    assert (done["succeeded"], done["failed"], done["canceled"]) == (1, 0, 0), done
    events = stack.stored_events("m-healed")
    assert [d["step"] for d in of_type(events, "migration.step_completed", VM)] == FLOW3
    for kind in EFFECTS:
        assert len(of_type(events, kind, VM)) == 1, kind
    assert len(of_type(events, "migration.completed")) == 1

    # And `ferry status` reports one restart after a SIGKILL for every process
    status = stack.status()
    assert status.returncode == 0, status.stdout
    for name, _ in SCHEDULE:
        row = next(line for line in status.stdout.splitlines() if line.strip().startswith(name))
        assert row.split()[3] == "1" and "signal SIGKILL" in row, status.stdout
