"""VMware migrations through the four services, against the vSphere API simulator.

The simulator (vcsim, built from Debian's govmomi with Ferry's small overlay) serves
the inventory, power, snapshots, CBT change ids and the datastore HTTP path; its
datastore is a local folder, so the test guest's disk is placed there as a VM's
flat extent and Ferry reads the guest for real. Writes "by the guest" between
precopies are writes into that flat extent (the simulator runs no guest).

- warm (flow 1): precopies of changed areas only, cutover, the last delta with the
  source off, a real in-place conversion, data equal after the cutover, no snapshot
  left at the source;
- cancel during a precopy: the VM ends Canceled, its source still runs and keeps no
  snapshot;
- kill -9 of the volume-service during a precopy: the round resumes and no snapshot
  leaks; a disk file gone or the VM removed between rounds: a clear reason, no snapshot;
- preflight: each vSphere reason, for a VM shaped in the simulator to trigger it,
  shown by ``ferry describe plan``.

The cold migrations (flow 3, and flow 1 without precopies) are in ``test_vsphere_cold.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.platform.copy import engine, source
from ferry.platform.images import ImageRef
from ferry.testing.migration import apply_yaml, finished, guest_ova, of_type, plant_secret
from ferry.testing.stack import LocalStack
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Endpoint
from ferry.testing.vcsim.stack import (
    KIB,
    guest_write,
    prepare,
    rounds,
    step_times,
    vsphere_objects,
)

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]
BLOCK = 64 * KIB  # the simulator's change tracking granularity
# Guest writes land in the gap between the MBR and the first partition (1 MiB),
# past GRUB's core image: bytes no file system or conversion step owns.
MARKS = (640 * KIB, 832 * KIB)

FLOW1_WARM = [
    "Started",
    "CreateDataVolumes",
    "AllocateDisks",
    "CreateSnapshot",
    "CopyDisks",
    "CopyingPaused",
    "StorePowerState",
    "PowerOffSource",
    "CreateFinalSnapshot",
    "Finalize",
    "ConvertGuest",
    "CreateVM",
    "Completed",
]


PACE = "FERRY_PLATFORM__LOCAL__MAX_RATE"


@pytest.fixture
def paced(tmp_path: Path) -> Iterator[LocalStack]:
    """A stack whose copies move at 4 MiB/s: the first precopy of the test guest's disk
    (about 375 MiB of data) would last about 90 s, so a cancel or a kill made when the
    test sees it copying lands inside it however loaded the machine (a 15 s round was
    once seen ending before a loaded test's cancel). The tests do not wait it out: the
    cancel ends it, and the kill test lifts the pace for the restarted service."""
    stack = LocalStack(tmp_path / "stack", env={PACE: str(4 * 1024 * 1024)})
    try:
        yield stack.start()
    finally:
        stack.close()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_warm_precopies_only_changed_areas_then_converts_in_place(
    stack: LocalStack, vcsim: Endpoint
) -> None:
    # Given a running VM with CBT on whose disk is the test guest's
    guest = guest_ova(REPO)
    with arrange.admin(vcsim) as si:
        flat = arrange.place_disk(si, "DC0_H0_VM0", Path(guest["raw"]), cbt=True)
        vm_ref = arrange.find_vm(si, "DC0_H0_VM0")
        vm = vm_ref._moId
        # And a warm plan that copies again 10 s after each round
        prepare(stack, vcsim, vsphere_objects(vcsim, ["DC0_H0_VM0"], plan="warm", warm=True))
        recorder = stack.record_events()
        time.sleep(2)
        began = time.monotonic()
        assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0

        # When the guest writes 4 KiB after the first round and again after the second
        written = []
        for n, offset in enumerate(MARKS):
            stack.wait_for(
                f"precopy {n}",
                lambda ev, n=n: [r for r in rounds(ev, vm) if r["precopy"] == n],
                recorder,
                timeout=600,
            )
            written.append(guest_write(flat, offset, f"round-{n + 1} ".encode()))
        stack.wait_for(
            "precopy 2",
            lambda ev: [r for r in rounds(ev, vm) if r["precopy"] == 2],
            recorder,
            timeout=300,
        )
        # (each precopy after the first copied only the blocks written before it: a write
        # the test makes after seeing a round end lands in the next round, or, when this
        # machine is too loaded to see the end within the 10 s interval, in the one after)
        assert sum([r["changed"] for r in rounds(recorder.events(), vm)][1:]) <= 2 * BLOCK
        # And the cutover is asked for
        cut = stack.ferry("cutover", "m1", "--at", "now")
        assert cut.returncode == 0, cut.stderr
        cutover_at = time.monotonic()
        done = stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=1200)
        ended = time.monotonic()
        snapshots_left = arrange.snapshot_names(vm_ref)
        source_power = str(vm_ref.runtime.powerState)
    events = recorder.events()
    assert (done["succeeded"], done["failed"], done["canceled"]) == (1, 0, 0), events[-5:]

    # Then the itinerary is flow 1, with three rounds before the cutover and the last one
    started = [d["step"] for d in of_type(events, "migration.step_started", vm)]
    assert [s for s in dict.fromkeys(s.split("@")[0] for s in started)] == FLOW1_WARM
    copied = rounds(events, vm)
    changed = [r["changed"] for r in copied]
    # the first round reads what is allocated; the later ones together exactly the two
    # 64 KiB blocks written (each in the round after its write, unless a loaded machine
    # saw a round end late: see above), and never more
    assert changed[0] >= 300 * 1024 * KIB
    assert sum(changed[1:]) == 2 * BLOCK, changed
    assert all(c in (0, BLOCK, 2 * BLOCK) for c in changed[1:]), changed
    assert [r["precopy"] for r in copied[:3]] == [0, 1, 2]

    # And after the cutover the target holds the source's bytes: the last round compared
    # the whole disks, and the test's own digest of the source agrees
    [last] = copied[-1]["disks"]
    whole = engine.digest(source.open_source(ImageRef(path=str(flat))))
    assert last["target"]["algorithm"] == whole.algorithm
    assert last["target"]["digest"] == last["source"]["digest"] == whole.digest
    # And the guest's writes are on the converted volume
    [converted] = of_type(events, "conversion.guest_converted", vm)
    assert converted["mode"] == "in-place"
    volume = Path(converted["volumes"][0]["path"])
    with volume.open("rb") as target:
        for offset, data in zip(MARKS, written, strict=True):
            target.seek(offset)
            assert target.read(len(data)) == data

    # And the source is left off (it was migrated) with no snapshot of Ferry's
    assert source_power == "poweredOff"
    assert snapshots_left == []
    assert of_type(events, "migration.powered_off", vm)

    times = step_times(events, vm)
    print(
        f"\nwarm vSphere e2e: {ended - began:.0f} s in all, cutover to end "
        f"{ended - cutover_at:.0f} s; bytes per round {changed}; "
        f"round seconds {[round(d['seconds'], 1) for r in copied for d in r['disks']]}; "
        f"steps {times}"
    )


@pytest.mark.timeout(600)
def test_cancel_during_a_precopy_leaves_no_snapshot(paced: LocalStack, vcsim: Endpoint) -> None:
    stack = paced
    # Given a running VM with CBT on whose disk is the test guest's, and a warm plan
    guest = guest_ova(REPO)
    with arrange.admin(vcsim) as si:
        arrange.place_disk(si, "DC0_H0_VM1", Path(guest["raw"]), cbt=True)
        vm_ref = arrange.find_vm(si, "DC0_H0_VM1")
        vm = vm_ref._moId
        prepare(stack, vcsim, vsphere_objects(vcsim, ["DC0_H0_VM1"], plan="warm", warm=True))
        recorder = stack.record_events()
        time.sleep(2)
        assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0

        # When the migration is canceled while the first precopy copies
        stack.wait_for(
            "the first precopy copying",
            lambda ev: [p for p in of_type(ev, "volume.disk_progress", vm) if p.get("done", 0) > 0],
            recorder,
            timeout=300,
        )
        during = not rounds(recorder.events(), vm)
        assert stack.ferry("cancel", "m1").returncode == 0
        stack.wait_for(
            "the VM canceled", lambda ev: of_type(ev, "migration.vm_canceled", vm), recorder, 300
        )
        stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=300)
        # (the clean-up removes the snapshots after the VM's end is stored)
        deadline = time.monotonic() + 60
        while arrange.snapshot_names(vm_ref) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = arrange.snapshot_names(vm_ref)
        power = str(vm_ref.runtime.powerState)

    # Then it was canceled during the round, and the source runs on with no snapshot left
    assert during, "the first precopy had finished before the cancel"
    assert left == []
    assert power == "poweredOn"
    assert not of_type(recorder.events(), "migration.powered_off", vm)


@pytest.mark.timeout(900)
def test_a_volume_service_killed_in_a_precopy_leaks_no_snapshot(
    paced: LocalStack, vcsim: Endpoint
) -> None:
    stack = paced
    # Given a running VM with CBT on whose disk is the test guest's, in a warm plan
    guest = guest_ova(REPO)
    with arrange.admin(vcsim) as si:
        flat = arrange.place_disk(si, "DC0_H0_VM0", Path(guest["raw"]), cbt=True)
        vm_ref = arrange.find_vm(si, "DC0_H0_VM0")
        vm = vm_ref._moId
        prepare(stack, vcsim, vsphere_objects(vcsim, ["DC0_H0_VM0"], plan="warm", warm=True))
        recorder = stack.record_events()
        time.sleep(2)
        assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0

        # When the volume-service is killed -9 while the first precopy copies, then restarted
        stack.wait_for(
            "the first precopy copying",
            lambda ev: [p for p in of_type(ev, "volume.disk_progress", vm) if p["done"] > 0],
            recorder,
            timeout=300,
        )
        killed_during = not rounds(recorder.events(), vm)
        stack.kill("volume-service")
        stack.env = {k: v for k, v in stack.env.items() if k != PACE}  # the round, at full speed
        stack.restart("volume-service")
        # And the guest writes after the first round, which a second round copies
        stack.wait_for("precopy 0", lambda ev: rounds(ev, vm), recorder, timeout=600)
        seen = len(rounds(recorder.events(), vm))
        guest_write(flat, MARKS[0], b"after the kill ")
        # (the first round that begins after the write copies it: the next one, or a later
        # one when this test saw the round end late)
        stack.wait_for(
            "the precopy that copies the write",
            lambda ev: [r for r in rounds(ev, vm)[seen:] if r["changed"] >= BLOCK],
            recorder,
            timeout=300,
        )
        during_rounds = arrange.snapshot_names(vm_ref)
        # And the migration is canceled
        assert stack.ferry("cancel", "m1").returncode == 0
        stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=300)
        deadline = time.monotonic() + 60
        while arrange.snapshot_names(vm_ref) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = arrange.snapshot_names(vm_ref)

    # Then the killed attempt's snapshot was not leaked: between rounds only the two
    # checkpoints in use remain (the one counted from and the one taken), and after the
    # cancel none; a later round still copied the guest's write
    assert killed_during, "the first precopy had finished before the kill"
    assert 1 <= len(during_rounds) <= 2, during_rounds
    assert left == []
    changed = [r["changed"] for r in rounds(recorder.events(), vm)]
    assert any(c >= BLOCK for c in changed[1:]), changed


@pytest.mark.timeout(600)
@pytest.mark.parametrize("fault", ["disk file gone", "VM removed"])
def test_a_source_gone_between_precopies_fails_the_vm_with_its_reason_and_no_snapshot(
    stack: LocalStack, vcsim: Endpoint, fault: str
) -> None:
    # Given a running VM with CBT on and a small disk, in a warm plan
    with arrange.admin(vcsim) as si:
        raw = stack.root / "small.raw"
        with raw.open("wb") as out:
            out.truncate(64 * 1024 * KIB)
            out.write(b"guest data" * 1000)
        flat = arrange.place_disk(si, "DC0_C0_RP0_VM0", raw, cbt=True)
        vm_ref = arrange.find_vm(si, "DC0_C0_RP0_VM0")
        vm = vm_ref._moId
        prepare(stack, vcsim, vsphere_objects(vcsim, ["DC0_C0_RP0_VM0"], plan="warm", warm=True))
        recorder = stack.record_events()
        time.sleep(2)
        assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0
        stack.wait_for("precopy 0", lambda ev: rounds(ev, vm), recorder, timeout=300)

        # When the source loses the disk's file, or the whole VM, before the next round
        if fault == "disk file gone":
            flat.unlink()
        else:
            arrange.run(vm_ref.PowerOffVM_Task())
            arrange.run(vm_ref.Destroy_Task())
        stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=300)
        deadline = time.monotonic() + 60
        left = ["?"]
        while left and time.monotonic() < deadline:
            left = [] if fault == "VM removed" else arrange.snapshot_names(vm_ref)
            time.sleep(0.5)
        power = "" if fault == "VM removed" else str(vm_ref.runtime.powerState)

    # Then the VM failed in the next round with a reason that names what is gone
    [failed] = of_type(recorder.events(), "migration.vm_failed", vm)
    assert failed["step"].startswith("CopyDisks")
    if fault == "disk file gone":
        assert "DC0_C0_RP0_VM0/disk1-flat.vmdk" in failed["reason"], failed
        assert "404" in failed["reason"], failed
        # And the source runs on, with no snapshot of Ferry's left
        assert power == "poweredOn"
        assert left == []
    else:
        assert f"VM {vm!r} not found" in failed["reason"], failed
    assert not of_type(recorder.events(), "migration.powered_off", vm)


@pytest.mark.timeout(600)
def test_max_in_flight_per_host_holds_a_second_vm_of_the_same_esxi_host(
    stack: LocalStack, vcsim: Endpoint
) -> None:
    # Given two running VMs of host DC0_H0 with CBT on and small disks, and a warm plan
    # that lets one VM per host be in flight
    with arrange.admin(vcsim) as si:
        raw = stack.root / "small.raw"
        with raw.open("wb") as out:
            out.truncate(16 * 1024 * KIB)
            out.write(b"guest data" * 1000)
        refs = {}
        for name in ("DC0_H0_VM0", "DC0_H0_VM1"):
            arrange.place_disk(si, name, raw, cbt=True)
            refs[name] = arrange.find_vm(si, name)
        first, second = (refs[n]._moId for n in ("DC0_H0_VM0", "DC0_H0_VM1"))
        text = vsphere_objects(
            vcsim, ["DC0_H0_VM0", "DC0_H0_VM1"], plan="warm", warm=True, interval=600, per_host=1
        )
        prepare(stack, vcsim, text)
        recorder = stack.record_events()
        time.sleep(2)
        assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0

        # When one of them is in its precopies
        stack.wait_for(
            "a first precopy",
            lambda ev: rounds(ev, first) or rounds(ev, second),
            recorder,
            timeout=300,
        )
        time.sleep(3)
        events = recorder.events()
        running = [vm for vm in (first, second) if of_type(events, "migration.vm_started", vm)]
        shown = stack.ferry("describe", "plan", "warm").stdout
        assert stack.ferry("cancel", "m1").returncode == 0
        stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=300)

    # Then the other waits, and `ferry describe plan` says the host holds it
    assert len(running) == 1, running
    assert "1 VMs on host DC0_H0 in flight" in " ".join(shown.split()), shown


@pytest.mark.timeout(300)
@pytest.mark.parametrize("bad", ["thumbprint", "password"])
def test_a_distrusted_server_or_refused_login_rejects_the_plan_with_its_reason(
    stack: LocalStack, vcsim: Endpoint, bad: str
) -> None:
    # Given a Provider pinned to another certificate, or a Secret with a wrong password
    text = vsphere_objects(vcsim, ["DC0_H0_VM0"], plan="cold", warm=False)
    password = vcsim.password
    if bad == "thumbprint":
        text = text.replace(vcsim.thumbprint, ":".join(["AB"] * 20))
    else:
        password = "not-" + vcsim.password
    plant_secret(stack, "vcenter-creds", {"user": vcsim.username, "password": password})
    apply_yaml(stack, text)

    # When a migration is asked for
    stack.ferry("migrate", "cold", "--name", "m1")
    deadline = time.monotonic() + 60
    shown = ""
    while "rejected" not in shown and time.monotonic() < deadline:
        time.sleep(1)
        shown = stack.ferry("describe", "plan", "cold").stdout

    # Then the plan is rejected with the reason: the thumbprint the server showed, or
    # the refused login, and no password anywhere in what is shown
    said = " ".join(shown.split())
    assert "provider 'vcenter' is not reachable" in said, shown
    if bad == "thumbprint":
        assert f"its SHA-1 thumbprint is {vcsim.thumbprint}" in said, shown
    else:
        assert f"refused the login of '{vcsim.username}'" in said, shown
    assert password not in shown
    assert password not in stack.log_text()


@pytest.mark.timeout(300)
def test_preflight_reasons_of_vsphere_vms_in_describe_plan(
    stack: LocalStack, vcsim: Endpoint
) -> None:
    # Given VMs shaped in the simulator, one preflight reason each
    from pyVmomi import vim

    with arrange.admin(vcsim) as si:

        def shape(name: str, spec: Any) -> None:
            arrange.run(arrange.find_vm(si, name).ReconfigVM_Task(spec))

        # DC0_H0_VM0: CBT off (the model's default), which only a warm plan minds
        ref = arrange.find_vm(si, "DC0_H0_VM1")
        arrange.run(ref.CreateSnapshot_Task("before-upgrade", "", False, False))
        ref = arrange.find_vm(si, "DC0_C0_RP0_VM0")
        [disk] = [d for d in ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
        disk.backing.diskMode = "independent_persistent"
        disk.backing.sharing = "sharingMultiWriter"
        edit = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
        shape("DC0_C0_RP0_VM0", vim.vm.ConfigSpec(deviceChange=[edit], changeTrackingEnabled=True))
        shape(
            "DC0_C0_RP0_VM1",
            vim.vm.ConfigSpec(
                firmware="efi",
                bootOptions=vim.vm.BootOptions(efiSecureBootEnabled=True),
                changeTrackingEnabled=True,
            ),
        )
        shape("DC0_H0_VM1", vim.vm.ConfigSpec(changeTrackingEnabled=True))
        # old-hw: a clone of DC0_H0_VM0 put on virtual hardware 4, where CBT cannot be on
        ref = arrange.find_vm(si, "DC0_H0_VM0")
        spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec())
        arrange.run(ref.CloneVM_Task(folder=ref.parent, name="old-hw", spec=spec))
        shape("old-hw", vim.vm.ConfigSpec(version="vmx-04"))
    vms = ["DC0_H0_VM0", "DC0_H0_VM1", "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1", "old-hw"]
    prepare(stack, vcsim, vsphere_objects(vcsim, vms, plan="shaped", warm=True))

    # When a migration of the warm plan is asked for
    stack.ferry("migrate", "shaped", "--name", "m1")
    deadline = time.monotonic() + 60
    shown = ""
    while "rejected" not in shown and time.monotonic() < deadline:
        time.sleep(1)
        shown = stack.ferry("describe", "plan", "shaped").stdout

    # Then `ferry describe plan` shows each VM's reason, and nothing ran
    assert "migration m1 was rejected by preflight:" in shown, shown
    said = [line.strip() for line in shown.splitlines()]
    expected = [
        ("DC0_H0_VM0", "changed block tracking (CBT) is off"),
        ("DC0_H0_VM1", "the VM has snapshots (before-upgrade)"),
        ("DC0_C0_RP0_VM0", "is independent (independent_persistent)"),
        ("DC0_C0_RP0_VM0", "is shared with other VMs (multi-writer)"),
        ("DC0_C0_RP0_VM1", "UEFI secure boot is on"),
        ("old-hw", "CBT) cannot be enabled: its virtual hardware is vmx-04"),
    ]
    for vm, reason in expected:
        assert [s for s in said if s.startswith(f"{vm}: ") and reason in s], (vm, reason, shown)
    assert not stack.stored_events() or not [
        e for e in stack.stored_events() if e["type"] == "migration.vm_started.v1"
    ]
