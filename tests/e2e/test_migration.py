"""A real OVA guest migrated through all four services, as separate processes.

One migration carries four checks, because a full virt-v2v conversion costs
about five minutes here:

- flow 3 for real (OVA → blank volumes → pvcinit → virt-v2v into the volumes →
  VirtualMachine → boot seen), in the order the events show;
- ``maxInFlight: 1``: the plan's two VMs run one after the other;
- cancel during conversion: the first VM, canceled while virt-v2v runs, ends
  Canceled with no QEMU or virt-v2v process and no volume left, and the second
  VM then converts and boots;
- the audit stream: a subscriber started before the migration received every
  event of it, in order per VM, each valid against its JSON Schema, and a canary
  password planted in the Provider's Secret shows up in no event, no service log,
  no process's arguments and no child's environment while the migration ran.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from ferry.testing.migration import (
    FLOW3,
    apply_yaml,
    finished,
    guest_ova,
    of_type,
    ova_objects,
    place_ovas,
    plant_secret,
    start_migration,
)
from ferry.testing.stack import LocalStack, processes_named, v2v_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1500)]

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "proto" / "schemas"
CANARY = "canary-Pw-7f3a9e1c5d"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path / "stack")
    try:
        yield stack.start()
    finally:
        stack.close()


class CanaryWatch:
    """Samples every process's argv and environment while the migration runs."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.hits: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CanaryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.wait(1.0):
            self.samples += 1
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit() or entry.name == me:
                    continue
                for part in ("cmdline", "environ"):
                    try:
                        blob = (entry / part).read_bytes()
                    except OSError:
                        continue
                    if self.secret in blob:
                        self.hits.append(f"/proc/{entry.name}/{part}")


def session_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[3])


def in_sessions(sessions: set[int]) -> list[int]:
    """Live processes of these sessions: virt-v2v, nbdkit, the libguestfs QEMU, …"""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if session_of(int(entry.name)) in sessions:
                    found.append(int(entry.name))
            except (OSError, ValueError):
                continue
    return found


def steps_started(events: list[dict[str, Any]], vm: str) -> list[str]:
    return [d["step"] for d in of_type(events, "migration.step_started", vm)]


def schema_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        path = SCHEMAS / f"{event['type']}.json"
        if not path.exists():
            errors.append(f"no schema for {event['type']}")
            continue
        schema = json.loads(path.read_text())
        for error in jsonschema.Draft202012Validator(schema).iter_errors(event["data"]):
            errors.append(f"{event['type']} {event['id']}: {error.message}")
    return errors


def test_two_vms_one_at_a_time_first_canceled_in_conversion_second_boots(
    stack: LocalStack,
) -> None:
    # Given two copies of the test guest (VMs a and b), a Provider whose Secret holds
    # a canary password, and a plan that runs one VM at a time
    guest = guest_ova(REPO)
    ova_dir = place_ovas(stack, Path(guest["ova"]), ["guest-a", "guest-b"])
    plant_secret(stack, "ova-creds", {"user": "root", "password": CANARY})
    vm_a, vm_b = "guest-a/ferry-test-guest", "guest-b/ferry-test-guest"
    apply_yaml(stack, ova_objects(ova_dir, [vm_a, vm_b], max_in_flight=1, secret="ova-creds"))
    # And a subscriber of the audit stream started before the migration
    recorder = stack.record_events()
    time.sleep(2)

    with CanaryWatch(CANARY) as watch:
        # When the migration starts
        start_migration(stack, "e2e", "m1")
        # And VM a is canceled while virt-v2v converts it
        stack.wait_for(
            "virt-v2v working on VM a",
            lambda ev: any(
                "Inspecting" in d.get("stage", "") for d in of_type(ev, "conversion.progress", vm_a)
            ),
            recorder,
            timeout=600,
        )
        v2v_of_a = v2v_processes("guest-a.ova")
        sessions = {session_of(pid) for pid, _ in v2v_of_a}
        canceled = stack.ferry("cancel", "m1", "--vm", vm_a)
        assert canceled.returncode == 0, canceled.stderr
        stack.wait_for(
            "VM a canceled", lambda ev: of_type(ev, "migration.vm_canceled", vm_a), recorder, 300
        )
        # Then while b is still being migrated, nothing of a remains
        events = recorder.events()
        assert not of_type(events, "migration.vm_completed", vm_b)
        a_volumes = [
            v["path"] for d in of_type(events, "volume.disks_allocated", vm_a) for v in d["volumes"]
        ]
        assert a_volumes, "VM a never got its volumes allocated"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (
            any(Path(p).exists() for p in a_volumes) or in_sessions(sessions)
        ):
            time.sleep(1)
        assert v2v_of_a, "virt-v2v was not running for VM a when it was canceled"
        assert in_sessions(sessions) == []  # virt-v2v with its nbdkit and appliance QEMU
        assert [p for p in processes_named("qemu-system-x86_64") if "guest-a" in p[1]] == []
        assert [p for p in a_volumes if Path(p).exists()] == []
        assert not (stack.data_dir / "vms" / "e2e" / "guest-a.yaml").exists()

        # And the migration ends with b migrated and booted
        done = stack.wait_for(
            "the migration to end", lambda ev: finished(ev, "m1"), recorder, timeout=1200
        )
    assert (done["succeeded"], done["failed"], done["canceled"]) == (1, 0, 1)
    time.sleep(2)  # let the recorder write the last lines
    events = recorder.events()

    # Flow 3, in order, for b
    assert steps_started(events, vm_b) == FLOW3
    assert [d["step"] for d in of_type(events, "migration.step_completed", vm_b)] == FLOW3
    assert of_type(events, "conversion.guest_converted", vm_b)[0]["mode"] == "full"
    running = of_type(events, "vm.vm_running", vm_b)
    assert len(running) == 1
    console = Path(running[0]["console"]).read_text(errors="replace")
    assert guest["login_marker"] in console
    assert (stack.data_dir / "vms" / "e2e" / "guest-b.yaml").exists()
    # a stopped in ConvertGuest, before any VM was made
    assert steps_started(events, vm_a)[-1] == "ConvertGuest"
    assert not of_type(events, "vm.vm_created", vm_a)

    # One at a time: b started only after a had ended
    a_end = next(e["time"] for e in events if e["type"] == "migration.vm_canceled.v1")
    b_start = next(
        e["time"]
        for e in events
        if e["type"] == "migration.vm_started.v1" and e["data"]["vm"] == vm_b
    )
    assert b_start >= a_end

    # The audit stream: the subscriber received exactly what the stream holds, in order
    stored = stack.stored_events("m1")
    mine = [e for e in events if e["data"].get("migration") == "m1"]
    assert [e["id"] for e in mine] == [e["id"] for e in stored]
    # And each publisher's events of a VM are stored in the order of their times. Across
    # publishers the stream's order is arrival order: the controller's VmCanceled and the
    # conversion-service's canceled ConversionFailed are stamped by two processes at once.
    for vm in (vm_a, vm_b):
        for source in {e["source"] for e in mine}:
            times = [e["time"] for e in mine if e["data"]["vm"] == vm and e["source"] == source]
            assert times == sorted(times), f"{source} events of {vm} out of order"
    assert schema_errors(mine) == []

    # The canary is nowhere: events, logs, argv, environments
    assert CANARY not in json.dumps(events)
    assert CANARY not in stack.log_text()
    assert watch.samples > 10
    assert watch.hits == []
    assert CANARY in (stack.data_dir / "secrets/default/ova-creds/password").read_text()
