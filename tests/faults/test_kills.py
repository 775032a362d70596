"""kill -9 every service, and the nats-server, during one real migration; it still completes.

The schedule of kill points is data (``SCHEDULE``): which process, at which
moment of the migration (a step boundary, the middle of a conversion, the copy
of the disk into the volume, a boot), each process once. One migration takes
them all, in order, so the whole schedule costs little more than one conversion
(the killed one dies early, while inspecting) instead of one migration per point. After
each kill the process is started again, as a supervisor would.

At the end: the migration completed; exactly one volume per disk and one
VirtualMachine exist; no step's effect happened twice and the VM completed once,
counted in the publish ledger every service writes (``FERRY_BUS__LEDGER_DIR``),
which sees what the stream's dedupe hides (one distinct result id per effect);
nothing the stream had acknowledged before the nats-server was killed is
missing; the guest booted.

Checksums: in this flow (OVA, cold, local) virt-v2v converts and writes the
disk in one go, so there is no unchanged copy whose checksum could match the
source; flows with CopyDisks verify that in the volume-service's own tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ferry.bus import ledger
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
from ferry.testing.stack import (
    EventRecorder,
    LocalStack,
    processes_named,
    v2v_processes,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(2100)]

REPO = Path(__file__).resolve().parents[2]
VM = "guest/ferry-test-guest"
NATS = "nats-server"
EFFECTS = [  # each step's outcome: exactly one of each in the stream
    "volume.volumes_created",
    "volume.disks_allocated",
    "conversion.guest_converted",
    "vm.vm_created",
    "vm.vm_running",
]
Events = list[dict[str, Any]]


def step_started(step: str) -> Callable[[Events], bool]:
    return lambda ev: step in [d["step"] for d in of_type(ev, "migration.step_started", VM)]


def stage(text: str) -> Callable[[Events], bool]:
    """virt-v2v has reported a stage containing ``text``.

    Which run reported it cannot be told from the stream: a redelivered conversion's
    first stages are identical messages to the killed run's (same command, same
    attempt), so JetStream deduplicates them within its window. The schedule is
    built so that each stage it waits for happens in one run only.
    """
    return lambda ev: any(
        text in d.get("stage", "") for d in of_type(ev, "conversion.progress", VM)
    )


def v2v_runs(stack: LocalStack) -> int:
    """How many times virt-v2v was started, from the conversion-service's kept run logs."""
    logs = (stack.data_dir / "logs" / "conversion").rglob("*.log")
    return sum(log.read_text(errors="replace").count("ferry: full conversion of") for log in logs)


def event(kind: str) -> Callable[[Events], bool]:
    return lambda ev: bool(of_type(ev, kind, VM))


@dataclass(frozen=True)
class Kill:
    """kill -9 ``target`` once ``when`` holds (None: before the migration starts),
    then restart it ``down_seconds`` after ``back_when`` holds (None: at once)."""

    target: str  # a service name, or "nats-server"
    point: str  # what was happening
    when: Callable[[Events], bool] | None = field(repr=False)
    back_when: Callable[[Events], bool] | None = field(default=None, repr=False)
    down_seconds: float = 1.0


SCHEDULE = [
    Kill(
        "volume-service",
        "step boundary: dead when CreateDataVolumes is dispatched (the command waits)",
        when=None,
        back_when=step_started("CreateDataVolumes"),
        down_seconds=3.0,
    ),
    Kill(
        "migration-controller",
        "step boundary: ConvertGuest just dispatched, its result pending",
        step_started("ConvertGuest"),
    ),
    Kill(
        "conversion-service",
        "mid-conversion: virt-v2v (first run) inspecting the guest",
        stage("Inspecting"),
    ),
    Kill(
        NATS,
        "mid-transfer: virt-v2v (second run) copying the disk into the volume",
        stage("Copying disk"),
        down_seconds=3.0,
    ),
    Kill(
        "vm-service",
        "mid-boot: PowerOn, QEMU started, login not seen yet",
        event("vm.vm_starting"),
    ),
]


def ledger_ids(ledger_dir: Path, migration: str) -> dict[str, set[str]]:
    """Distinct result ids per message type for the VM, from every process's ledger."""
    ids: dict[str, set[str]] = {}
    for line in ledger.read(ledger_dir):
        if line["migration"] == migration and line["vm"] == VM:
            ids.setdefault(line["type"], set()).add(line["id"])
    return ids


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path / "stack", env={"FERRY_BUS__LEDGER_DIR": str(tmp_path / "ledger")})
    try:
        yield stack.start()
    finally:
        stack.close()


def last_stage(events: Events) -> str:
    stages = [d.get("stage", "") for d in of_type(events, "conversion.progress", VM)]
    steps = [d["step"] for d in of_type(events, "migration.step_started", VM)]
    return f"step {steps[-1] if steps else '-'}, v2v stage {stages[-1] if stages else '-'!r}"


def test_one_migration_survives_a_kill_of_every_process(stack: LocalStack) -> None:
    # Given one VM of the test guest, and an audit-stream subscriber
    guest = guest_ova(REPO)
    ova_dir = place_ovas(stack, Path(guest["ova"]), ["guest"])
    apply_yaml(stack, ova_objects(ova_dir, [VM], plan="faults"))
    recorder: EventRecorder = stack.record_events("events-1")
    time.sleep(2)
    acknowledged: list[str] = []
    outcomes: list[str] = []

    # When the migration runs and each process of the schedule is killed in turn
    early = [k for k in SCHEDULE if k.when is None]
    for kill in early:
        stack.kill(kill.target)
        outcomes.append(f"{kill.target} killed before the migration started")
    start_migration(stack, "faults", "m-faults")
    for kill in early:
        assert kill.back_when is not None
        stack.wait_for(kill.point, kill.back_when, recorder, timeout=300)
        time.sleep(kill.down_seconds)
        stack.restart(kill.target)
        outcomes.append(
            f"{kill.target} restarted; the stack went on to: {last_stage(recorder.events())}"
        )
    for number, kill in enumerate((k for k in SCHEDULE if k.when is not None), 1):
        assert kill.when is not None
        stack.wait_for(kill.point, kill.when, recorder, timeout=900)
        seen = recorder.events()
        if kill.target == NATS:
            acknowledged = [e["id"] for e in seen]  # the stream acked each before we saw it
            stack.kill_nats()
            time.sleep(kill.down_seconds)
            stack.restart_nats()
            recorder.stop()  # a fresh subscriber from the start of the stream
            recorder = stack.record_events(f"events-{number + 1}")
        else:
            stack.kill(kill.target)
            time.sleep(kill.down_seconds)
            stack.restart(kill.target)
        outcomes.append(f"{kill.target} killed at {kill.point} ({last_stage(seen)})")
    print("\n".join(outcomes))

    # Then the migration completes
    done = stack.wait_for(
        "the migration to end", lambda ev: finished(ev, "m-faults"), recorder, timeout=1200
    )
    assert (done["succeeded"], done["failed"], done["canceled"]) == (1, 0, 0), done
    events = stack.stored_events("m-faults")

    # And nothing acknowledged before the nats-server died is lost
    assert acknowledged
    stored_ids = {e["id"] for e in stack.stored_events()}
    assert [i for i in acknowledged if i not in stored_ids] == []

    # And each step completed once and each step's effect happened once
    assert [d["step"] for d in of_type(events, "migration.step_completed", VM)] == FLOW3
    for kind in EFFECTS:
        assert len(of_type(events, kind, VM)) == 1, kind
    # (the stream drops a re-published id within its window: the ledger does not)
    ids = ledger_ids(stack.root.parent / "ledger", "m-faults")
    for kind in [*EFFECTS, "migration.vm_completed"]:
        assert len(ids.get(kind + ".v1", set())) == 1, (kind, ids.get(kind + ".v1"))
    # (virt-v2v ran twice, the killed run and the one that finished, yet converted once)
    runs = v2v_runs(stack)
    attempts = [(d["step"], d["attempt"]) for d in of_type(events, "migration.step_started", VM)]
    print(f"virt-v2v runs: {runs} | step attempts: {attempts}")
    assert runs == 2

    # And exactly one volume for the one disk, and one VirtualMachine
    storage = stack.data_dir / "storage" / "volumes"
    assert len(list(storage.glob("storage/*/pv-*"))) == 1
    assert len(list(storage.glob("claims/*/*.json"))) == 1
    assert [p.name for p in (stack.data_dir / "vms" / "e2e").glob("*.yaml")] == ["guest.yaml"]

    # And the guest booted, under exactly one QEMU, with no virt-v2v left behind
    running = of_type(events, "vm.vm_running", VM)[0]
    assert guest["login_marker"] in Path(running["console"]).read_text(errors="replace")
    qemus = [p for p in processes_named("qemu-system-x86_64") if str(stack.root) in p[1]]
    assert len(qemus) == 1, qemus
    assert v2v_processes(str(stack.root)) == []
