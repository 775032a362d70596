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
  no process's arguments and no child's environment while the migration ran;
- the estimate after one prior migration on the same pair: a second plan migrates a
  fresh copy of the guest (VM c, converted and left off) in the same stack; its
  estimate rests on what b measured (not probed, not assumed), and its error,
  (actual - estimated) / actual from the events, is what ``describe migration`` and
  ``ferry_estimate_error_ratio`` show. The errors are printed (no bound asserted: the
  machine's speed varies).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import msgspec
import pytest

from ferry.proto.estimate import PlanEstimate
from ferry.testing.digests import file_sha256
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

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "proto" / "schemas"
CANARY = "canary-Pw-7f3a9e1c5d"


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
        # (found by the volume it writes: it reads private copies of the OVA's disks)
        a_volumes = [
            v["path"]
            for d in of_type(recorder.events(), "volume.disks_allocated", vm_a)
            for v in d["volumes"]
        ]
        assert a_volumes, "VM a never got its volumes allocated"
        v2v_of_a = v2v_processes(a_volumes[0])
        sessions = {session_of(pid) for pid, _ in v2v_of_a}
        canceled = stack.ferry("cancel", "m1", "--vm", vm_a)
        assert canceled.returncode == 0, canceled.stderr
        stack.wait_for(
            "VM a canceled", lambda ev: of_type(ev, "migration.vm_canceled", vm_a), recorder, 300
        )
        # Then while b is still being migrated, nothing of a remains
        events = recorder.events()
        assert not of_type(events, "migration.vm_completed", vm_b)
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
    [converted] = of_type(events, "conversion.guest_converted", vm_b)
    assert converted["mode"] == "full"
    assert converted["inspection"]["virtio_drivers"] is True
    # virt-v2v wrote into b's bound volumes themselves, which keep their sizes, and its
    # progress went through the disk copy to the end; b's OVA was only read
    [allocated] = of_type(events, "volume.disks_allocated", vm_b)
    assert [v["path"] for v in converted["volumes"]] == [v["path"] for v in allocated["volumes"]]
    assert [Path(v["path"]).stat().st_size for v in allocated["volumes"]] == [
        v["capacity"] for v in allocated["volumes"]
    ]
    copying = [d for d in of_type(events, "conversion.progress", vm_b) if d.get("disk") == 1]
    assert copying and copying[-1]["disks"] == 1 and copying[-1]["percent"] == 100.0
    assert file_sha256(ova_dir / "guest-b.ova") == file_sha256(Path(guest["ova"]))
    running = of_type(events, "vm.vm_running", vm_b)
    assert len(running) == 1
    console = Path(running[0]["console"]).read_text(errors="replace")
    assert guest["login_marker"] in console
    assert (stack.data_dir / "vms" / "e2e" / "guest-b.yaml").exists()
    # virt-v2v's long silent stages were covered by heartbeats: b's conversion published
    # its stage at least every 15 s (plus the time to publish), from start to end
    beats = sorted(
        datetime.fromisoformat(e["time"]).timestamp()
        for e in events
        if e["type"] == "conversion.progress.v1" and e["data"]["vm"] == vm_b
    )
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert len(beats) > 2 and max(gaps) <= 15 + 3, gaps
    # The estimate the controller recorded at the start is compared with what happened
    first = estimate_against_events(stack, events, "m1", vm_b)
    assert first["throughput"] == "probed"  # the pair had no history: a short read
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

    # A second plan on the same pair, a fresh copy of the guest (VM c), in the same stack
    vm_c = "guest-c/ferry-test-guest"
    place_ovas(stack, Path(guest["ova"]), ["guest-c"])
    # (left powered off: b's boot proved the conversion; c is about the estimate)
    c_objects = ova_objects(ova_dir, [vm_c], plan="e2e-again", secret="ova-creds", power="off")
    apply_yaml(stack, c_objects, "c.yaml")
    start_migration(stack, "e2e-again", "m2")
    done = stack.wait_for("m2 to end", lambda ev: finished(ev, "m2"), recorder, timeout=1800)
    assert (done["succeeded"], done["failed"]) == (1, 0)
    time.sleep(2)
    # Then its estimate rests on what b measured, and its error is recorded and shown
    second = estimate_against_events(stack, recorder.events(), "m2", vm_c)
    assert second["throughput"] == second["conversion"] == "measured", second
    print(f"estimate error after one prior migration on the pair: {second['error']:+.1%}")


def estimate_against_events(
    stack: LocalStack, events: list[dict[str, Any]], migration: str, vm: str
) -> dict[str, Any]:
    """The VM's recorded estimate against its duration in the events: the error, the
    provenance of its inputs; checked against ``describe migration`` and the metric."""
    got = stack.ferry("get", "migrations", migration, "-o", "json")
    assert got.returncode == 0, got.stderr
    doc = json.loads(got.stdout)
    doc = doc[0] if isinstance(doc, list) else doc
    est = msgspec.json.decode(doc["status"]["estimate"], type=PlanEstimate)
    guess = est.vm(vm)
    assert guess is not None, est
    estimated = guess.warm_duration if est.warm else guess.cold_duration
    actual = next(d["seconds"] for d in of_type(events, "migration.vm_completed", vm))
    error = (actual - estimated) / actual
    name = guess.name  # the inventory's name, as describe and the metric label it
    # describe migration prints it, rounded to a percent
    described = stack.ferry("describe", "migration", migration)
    line = next(x for x in described.stdout.splitlines() if f"estimate {name}:" in x)
    shown = int(re.search(r"\(([+-]\d+)%\)", line).group(1))  # type: ignore[union-attr]
    assert abs(shown - error * 100) <= 1, (line, error)
    # and the console's metric holds it (the console renews its views every few seconds)
    url = f"http://127.0.0.1:{stack.service('console').port}/metrics"
    series = f'ferry_estimate_error_ratio{{migration="{migration}",vm="{name}"}} '
    deadline, metric = time.monotonic() + 60, None
    while metric is None and time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=10) as page:
            lines = page.read().decode().splitlines()
        metric = next((float(x[len(series) :]) for x in lines if x.startswith(series)), None)
        if metric is None:
            time.sleep(2)
    assert metric is not None, "no ferry_estimate_error_ratio for the VM"
    # the VM state's start and end against the event's seconds: the same instants
    assert abs(metric - error) < 0.005, (metric, error)
    provenance = {i.name: i.provenance for i in est.inputs}
    print(
        f"estimate {migration}/{name}: {estimated:.0f} s estimated, {actual:.0f} s actual, "
        f"error {error:+.1%}; inputs {provenance}"
    )
    return {"error": error, **provenance}
