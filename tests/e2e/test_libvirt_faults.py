"""Warm libvirt migrations through the four services, interrupted during a precopy.

Two small data-only domains (no operating system: the data path is the point,
and QEMU's ``qemu-io`` writes through the guest's block backend and its dirty
bitmaps exactly as a guest's write would), each on its own warm plan, copied
at a capped rate so that a precopy lasts seconds:

- **cancel during a precopy**: the VM ends Canceled with no checkpoint and no
  backup job (hence no NBD export) left on the domain, which still runs;
- **preflight**: a warm plan for a shut-off domain is rejected with the libvirt
  validator's reason, and nothing is done to the domain;
- **kill -9 of the volume-service during a precopy**: the restarted service gets
  the round again and finishes it; nothing copied by the earlier rounds is
  copied again (no second full round, and the redone precopy takes over the
  backup job the killed attempt left and writes only the changed blocks that
  attempt had not made durable), and the target then equals the source.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from ferry.testing import libvirtd
from ferry.testing.digests import guest_digest
from ferry.testing.ledgers import delta_durable, wait_delta_durable
from ferry.testing.migration import apply_yaml, of_type, source_objects
from ferry.testing.stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

MiB = 1024 * 1024
SIZE = 64 * MiB
RATE = 2 * MiB  # bytes per second: a 24 MiB precopy takes about 12 s
WRITE = 24 * MiB


@pytest.fixture
def guests() -> Iterator[dict[str, libvirtd.Guest]]:
    conn = libvirt.open(libvirtd.uri_or_skip())
    made: dict[str, libvirtd.Guest] = {}
    try:
        for role in ("cancel", "kill", "off"):
            made[role] = libvirtd.define_guest(
                conn, [SIZE], fill=[(0, 2 * MiB, 0x11)], start=role != "off"
            )
        yield made
    finally:
        for guest in made.values():
            guest.remove()
        conn.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    env = {
        "FERRY_PLATFORM__LOCAL__MAX_RATE": str(RATE),
        "FERRY_PLATFORM__LOCAL__CHECKPOINT_SECONDS": "0.2",
        # the domains have no OS to answer the power button: the cutover forces them off
        "FERRY_CONTROLLER__SHUTDOWN_TIMEOUT_SECONDS": "3",
    }
    stack = LocalStack(tmp_path / "stack", env=env)
    try:
        yield stack.start()
    finally:
        stack.close()


def objects(guests: dict[str, libvirtd.Guest]) -> str:
    storage = "\n".join(
        f"    - {{source: {{name: '{g.root}'}}, destination: {{storageClass: standard}}}}"
        for g in guests.values()
    )
    plans = "".join(
        f"""\
---
apiVersion: ferry.dev/v1alpha1
kind: Plan
metadata: {{name: kvm-{role}}}
spec:
  provider: {{source: {{name: kvm}}, destination: {{name: local}}}}
  map: {{network: {{name: nets}}, storage: {{name: disks}}}}
  targetNamespace: kvm
  targetPowerState: "off"
  warm: true
  precopyIntervalSeconds: 8
  vms:
    - {{name: {guest.name}, targetName: "{role}"}}
"""
        for role, guest in guests.items()
    )
    objects = source_objects(
        "kvm", f' {{type: libvirt, url: "{libvirtd.URI}"}}', "default", f"\n{storage}"
    )
    return f"{objects}{plans}"


def backup_running(dom: libvirt.virDomain) -> bool:
    try:
        dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    return True


def progress(events: list[dict[str, Any]], vm: str) -> list[int]:
    """Bytes done reported by the precopies after round 0 (a loaded machine may run
    empty ones before the write lands: which precopy copies it is not fixed)."""
    found = of_type(events, "volume.disk_progress", vm)
    return [p["done"] for p in found if p["precopy"] >= 1]


def written(events: list[dict[str, Any]], vm: str) -> list[dict[str, Any]]:
    """The precopies that copied the write."""
    return [c for c in copied(events, vm, -1) if c["precopy"] >= 1 and c["changed"] >= WRITE]


def copied(events: list[dict[str, Any]], vm: str, precopy: int) -> list[dict[str, Any]]:
    """The rounds copied for ``vm``: round ``precopy``, or every round (-1)."""
    found = of_type(events, "volume.disks_copied", vm)
    return [c for c in found if precopy in (-1, c["precopy"])]


def test_warm_libvirt_vms_canceled_or_volume_service_killed_during_a_precopy(
    stack: LocalStack, guests: dict[str, libvirtd.Guest]
) -> None:
    t0 = time.monotonic()
    ids = {role: g.dom.UUIDString() for role, g in guests.items()}
    apply_yaml(stack, objects(guests))
    recorder = stack.record_events()
    time.sleep(2)
    # Given a warm plan for a shut-off domain: libvirt's validator rejects it in preflight
    started = stack.ferry("migrate", "kvm-off", "--name", "m-off")
    # (ferry migrate waits a bounded while for the verdict: a rejection in time exits 1)
    said = started.stdout + started.stderr
    assert started.returncode == 1 or "no verdict" in said, said
    rejected = stack.wait_for(
        "m-off rejected",
        lambda ev: [d for d in of_type(ev, "migration.rejected") if d["migration"] == "m-off"],
        recorder,
        timeout=60,
    )
    off = guests["off"]
    [reasons] = rejected[0]["reasons"].values()
    assert f"VM {off.name} is not running: warm migration copies a running VM" in reasons
    assert not off.dom.isActive() and off.dom.listAllCheckpoints(0) == []
    # And both other warm migrations past their full first round, with 24 MiB written since
    running = {role: guests[role] for role in ("cancel", "kill")}
    for role in running:
        started = stack.ferry("migrate", f"kvm-{role}", "--name", f"m-{role}")
        assert started.returncode == 0, started.stdout + started.stderr
    for role, guest in running.items():
        stack.wait_for(
            f"{role}: round 0", lambda ev, r=role: copied(ev, ids[r], 0), recorder, timeout=300
        )
        guest.write("vda", 16 * MiB, WRITE, 0x5A)
    # And both are in the middle of the precopy of the write (the one to kill with part
    # of it durable)
    stack.wait_for(
        "cancel: its precopy under way",
        lambda ev: any(0 < d < WRITE for d in progress(ev, ids["cancel"])),
        recorder,
        timeout=120,
    )
    wait_delta_durable(stack.root, ids["kill"], WRITE)

    # When one migration is canceled, and the volume-service is killed -9 and restarted
    canceled = stack.ferry("cancel", "m-cancel")
    assert canceled.returncode == 0, canceled.stdout + canceled.stderr
    stack.kill("volume-service")
    at_kill = recorder.events()
    killed_at = delta_durable(stack.root, ids["kill"])
    assert not written(at_kill, ids["kill"]), "the precopy had ended before the kill"
    stack.restart("volume-service")

    # Then the canceled VM ends Canceled, the domain still runs, with no checkpoint and no
    # backup job (so no NBD export) of Ferry's left on it
    stack.wait_for(
        "cancel: VM canceled",
        lambda ev: of_type(ev, "migration.vm_canceled", ids["cancel"]),
        recorder,
        timeout=180,
    )
    dom = guests["cancel"].dom
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (dom.listAllCheckpoints(0) or backup_running(dom)):
        time.sleep(0.5)
    assert dom.listAllCheckpoints(0) == []
    assert not backup_running(dom)
    assert dom.isActive()

    # And the killed round was delivered again to the new volume-service and finished
    redone = stack.wait_for(
        "kill: the write's precopy copied",
        lambda ev: written(ev, ids["kill"]),
        recorder,
        timeout=180,
    )
    events = recorder.events()
    # without copying the first round again, nor more than the blocks changed since it
    assert len(copied(events, ids["kill"], 0)) == 1
    [disk] = redone[0]["disks"]
    assert WRITE <= redone[0]["changed"] < SIZE // 2
    assert disk["bytes_copied"] <= redone[0]["changed"]
    # and resumed inside the round: what the killed attempt had made durable is not copied
    # again, and nothing else is skipped
    assert disk["bytes_copied"] == redone[0]["changed"] - killed_at, (disk, killed_at)
    again = disk["bytes_copied"]
    print(f"\nkilled at {killed_at} B of precopy {redone[0]['precopy']}; redone: {again} B")
    # And once the next round passed, cutting over gives a target equal to the source
    cut = stack.ferry("cutover", "m-kill", "--at", "now")
    assert cut.returncode == 0, cut.stdout + cut.stderr
    final = stack.wait_for(
        "kill: final round",
        lambda ev: [c for c in copied(ev, ids["kill"], -1) if c["checkpoint"] == ""],
        recorder,
        timeout=240,
    )
    [last] = final[0]["disks"]
    assert last["source"] == last["target"]
    assert last["source"]["digest"] == guest_digest(guests["kill"].disks["vda"])
    assert guests["kill"].dom.listAllCheckpoints(0) == []
    # (no OS to convert: the migration ends here)
    assert stack.ferry("cancel", "m-kill").returncode == 0
    print(f"total {time.monotonic() - t0:.0f} s")
