"""kill -9 each process of a ``ferry up`` stack during one migration; the supervisor heals it.

Unlike ``test_kills.py``, the test restarts nothing: ``ferry up --detach``'s
supervisor must notice each death and start the process again, and the
migration must go on and complete exactly once. The migration is a raw copy
(``skipGuestConversion``; the guest boots on SATA): the supervisor is the point,
and ``test_kills.py`` kills every process around a real conversion. Kill points:
step boundaries, the nats-server while the importer copies the disk (paced, so
the copy is still moving when the test sees it), the conversion-service (idle
in this flow: it must come back all the same), and the vm-service while the
guest boots.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.testing.migration import (
    RAW_COPY,
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
    "volume.disks_copied",
    "vm.vm_created",
    "vm.vm_running",
]
PACE = {"FERRY_PLATFORM__LOCAL__MAX_RATE": str(16 << 20)}  # 375 MiB of data: about 25 s


def step_started(step: str) -> Callable[[Events], bool]:
    return lambda ev: step in [d["step"] for d in of_type(ev, "migration.step_started", VM)]


def copying(ev: Events) -> bool:
    return any(d.get("done", 0) > 0 for d in of_type(ev, "volume.disk_progress", VM))


SCHEDULE: list[tuple[str, Callable[[Events], bool]]] = [
    ("volume-service", step_started("CreateDataVolumes")),
    ("migration-controller", step_started("CopyDisks")),
    ("nats-server", copying),
    ("conversion-service", step_started("CreateVM")),
    ("vm-service", lambda ev: bool(of_type(ev, "vm.vm_starting", VM))),
]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[SupervisedStack]:
    stack = SupervisedStack(tmp_path / "stack", env=PACE)
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
    apply_yaml(stack, ova_objects(ova_dir, [VM], plan="healed", raw_copy=True))
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
    assert [d["step"] for d in of_type(events, "migration.step_completed", VM)] == RAW_COPY
    for kind in EFFECTS:
        assert len(of_type(events, kind, VM)) == 1, kind
    assert len(of_type(events, "migration.completed")) == 1

    # And `ferry status` reports one restart after a SIGKILL for every process
    status = stack.status()
    assert status.returncode == 0, status.stdout
    for name, _ in SCHEDULE:
        row = next(line for line in status.stdout.splitlines() if line.strip().startswith(name))
        assert row.split()[3] == "1" and "signal SIGKILL" in row, status.stdout
