"""Cold VMware migrations through the four services, against the vSphere API simulator.

- flow 3 (the Provider's ``coldTransfer: virt-v2v``, the default): blank volumes,
  then one full virt-v2v conversion that reads the VM as Ferry describes it
  (``-i libvirtxml`` built from the vSphere inventory) with each disk served by a
  captive ``nbdkit curl`` over the datastore HTTP path, and writes the converted
  disks into the volumes; the VirtualMachine boots the test guest;
- flow 1 without precopies (``coldTransfer: importer``): the importer copies the flat
  extent over the same path, verified, as a raw copy (``skipGuestConversion``: the
  in-place conversion after a copy is the warm e2e's); it boots too, on SATA;
- a raw copy through an NFC export lease (``diskTransfer: nfc``) of a VM whose
  datastore path serves no flat extent, as on vSAN.

The test guest's disk is placed in the simulator's datastore as the VM's flat extent,
so virt-v2v converts a real guest read through the simulator's ``/folder`` path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from pyVmomi import vim

from ferry.platform.copy import engine
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.testing.migration import FLOW3, finished, guest_ova, of_type
from ferry.testing.stack import LocalStack
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Endpoint, Vcsim
from ferry.testing.vcsim.stack import prepare, step_times, vsphere_objects

pytestmark = [pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[2]


FLOW1_COLD_RAW = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "CreateVM",
    "PowerOn",
    "Completed",
]
VARIANTS = {
    # coldTransfer: (itinerary, conversion mode; None: a raw copy, no conversion)
    "virt-v2v": (FLOW3, "full"),
    # The importer's copy is the point here; its in-place conversion is the same step the
    # warm vSphere e2e runs after its last round (test_vsphere.py), so this one copies raw
    # and the guest boots on SATA: one virt-v2v run less under TCG.
    "importer": (FLOW1_COLD_RAW, None),
}


@pytest.mark.slow
@pytest.mark.timeout(3300)
@pytest.mark.parametrize("transfer", list(VARIANTS))
def test_a_cold_vmware_vm_is_converted_and_boots(
    stack: LocalStack, vcsim: Endpoint, transfer: str
) -> None:
    # Given a running VM with 1 GiB of memory whose disk is the test guest's
    guest = guest_ova(REPO)
    with arrange.admin(vcsim) as si:
        arrange.place_disk(si, "DC0_H0_VM0", Path(guest["raw"]))
        vm_ref = arrange.find_vm(si, "DC0_H0_VM0")
        arrange.run(vm_ref.ReconfigVM_Task(vim.vm.ConfigSpec(memoryMB=1024)))
        vm = vm_ref._moId
        # And a cold plan that runs the target, from a Provider with that cold transfer
        steps, mode = VARIANTS[transfer]
        text = vsphere_objects(
            vcsim,
            ["DC0_H0_VM0"],
            plan="cold",
            warm=False,
            power="on",
            cold_transfer=transfer,
            raw_copy=mode is None,
        )
        prepare(stack, vcsim, text)
        recorder = stack.record_events()
        time.sleep(2)
        began = time.monotonic()

        # When the migration runs
        assert stack.ferry("migrate", "cold", "--name", "m1").returncode == 0
        done = stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=3000)
        ended = time.monotonic()
        snapshots_left = arrange.snapshot_names(vm_ref)
        source_power = str(vm_ref.runtime.powerState)
    time.sleep(2)  # let the recorder write the last lines
    events = recorder.events()
    assert (done["succeeded"], done["failed"], done["canceled"]) == (1, 0, 0), [
        e for e in events if "reason" in e.get("data", e)
    ][-3:]

    # Then the itinerary is the variant's: flow 3 with virt-v2v's full conversion, or
    # flow 1 without precopies (the importer's verified copy, raw)
    started = [d["step"] for d in of_type(events, "migration.step_started", vm)]
    assert list(dict.fromkeys(s.split("@")[0] for s in started)) == steps
    converted = of_type(events, "conversion.guest_converted", vm)
    assert [c["mode"] for c in converted] == ([mode] if mode else [])
    if mode is None:
        [copied] = of_type(events, "volume.disks_copied", vm)
        [disk] = copied["disks"]
        assert disk["source"] == disk["target"] and disk["source"]["algorithm"] != "unverified"
    # And the VirtualMachine booted the guest (converted, or copied raw) to its login prompt
    [running] = of_type(events, "vm.vm_running", vm)
    console = Path(running["console"]).read_text(errors="replace")
    assert guest["login_marker"] in console
    # And the source was powered off by the migration and keeps no snapshot
    assert of_type(events, "migration.powered_off", vm)
    assert source_power == "poweredOff"
    assert snapshots_left == []
    # And the session cookie that nbdkit read is in no log line
    assert "vmware_soap_session" not in stack.log_text()
    print(
        f"\ncold vSphere e2e ({transfer}): {ended - began:.0f} s in all; "
        f"conversion {[c.get('seconds') for c in converted]} s; steps {step_times(events, vm)}"
    )


def test_a_vsan_like_vm_is_copied_through_an_export_lease(tmp_path: Path) -> None:
    """``diskTransfer: nfc`` through the four services, on a datastore whose path has no
    flat extent to read (vSAN): only the export lease can read the disk. A raw copy
    with the target left off keeps it short: the copy is the point."""
    data = bytes(2 << 20) + os.urandom(4 << 20) + bytes(2 << 20)  # 8 MiB, data in the middle
    raw = tmp_path / "disk.raw"
    raw.write_bytes(data)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch), "FERRY_CONTROLLER__RAW_COPY_INSPECTION": "off"}
    with Vcsim(no_flat_reads=True) as sim:
        assert sim.endpoint is not None
        vcsim = sim.endpoint
        stack = LocalStack(tmp_path / "stack", env=env).start()
        try:
            # Given a running VM whose disk is on such a datastore, and a cold plan of
            # it from a Provider that reads disks through export leases
            with arrange.admin(vcsim) as si:
                arrange.place_disk(si, "DC0_H0_VM0", raw)
                vm = arrange.find_vm(si, "DC0_H0_VM0")._moId
            text = vsphere_objects(
                vcsim,
                ["DC0_H0_VM0"],
                plan="nfc",
                warm=False,
                cold_transfer="importer",
                disk_transfer="nfc",
                raw_copy=True,
            )
            prepare(stack, vcsim, text)
            recorder = stack.record_events()
            time.sleep(2)

            # When the migration runs
            assert stack.ferry("migrate", "nfc", "--name", "m1").returncode == 0
            done = stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=600)
            time.sleep(1)
            events = recorder.events()
        finally:
            stack.close()

    # Then it succeeded, the copy's digests both the disk's, computed here on its own
    failures = [(d["step"], d.get("reason")) for d in of_type(events, "migration.step_failed")]
    assert (done["succeeded"], done["failed"]) == (1, 0), failures
    (copied,) = of_type(events, "volume.disks_copied", vm)
    (disk,) = copied["disks"]
    assert disk["source"]["digest"] == disk["target"]["digest"] == _digest(raw)
    # And no download was left behind
    assert list(scratch.glob("ferry-nfc-*")) == []


def _digest(raw: Path) -> str:
    src = open_source(ImageRef(path=str(raw)))
    try:
        return engine.digest(src).digest
    finally:
        src.close()
