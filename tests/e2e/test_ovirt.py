"""oVirt migrated cold through flow 2 by the four services, as separate processes.

The engine is the stand-in (:mod:`ferry.testing.ovirt.engine`), answering the real
``ovirtsdk4`` the services use; the disk is the test guest's, served by the **real
ovirt-imageio daemon** through a ticket the stand-in adds for each image transfer, as
the engine does. ``skipGuestConversion`` and a target left off keep it short: the
populator's copy, not the guest, is the point here.

- **cold, flow 2**: the running VM is shut down through the engine, a PVC + populator
  copies its disk through an image transfer (the prime volume gone afterwards, the claim
  bound to the verified copy, checksums equal to the test guest's disk), and nothing is
  left: every transfer finished, no ticket on the daemon, no qemu-nbd;
- **cancel mid-transfer**: with copies paced, a cancel during the copy leaves no open
  transfer and no ticket, and the VM running again, as it was;
- **warm, flow 1**: a VM backed by a running libvirt domain (a QEMU guest with no
  operating system, written to through QEMU's ``qemu-io`` between rounds, so no boot is
  needed) copied by incremental backups: a full round, two precopies of exactly the
  bytes written, ``ferry cutover``, the power-off through the engine, the last delta
  from the engine's cold backup, and the target equal to the source bit for bit, with
  no checkpoint, backup, transfer or ticket left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from ferry.platform.copy import engine as copy_engine
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.testing import libvirtd
from ferry.testing.digests import guest_digest
from ferry.testing.migration import finished, of_type
from ferry.testing.ovirt import scenario, vdsm
from ferry.testing.ovirt.engine import Engine, VmRecord
from ferry.testing.stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
# The fault tests' copies, paced: the guest's ~450 MiB of data take about two minutes,
# so a cancel or a kill lands mid-copy however slowly a loaded machine lets the test
# react (at 16 MiB/s the copy once ended first, and the wait for the cancel timed out).
PACED = 4 * 1024 * 1024


@pytest.fixture
def ovirt(tmp_path: Path) -> Iterator[tuple[Engine, VmRecord]]:
    with scenario.guest_vm(tmp_path, REPO) as made:
        yield made


def nothing_left(eng: Engine, vm: VmRecord) -> None:
    assert eng.imageio.exports == {}  # no ticket served, no qemu-nbd
    assert [t.phase for t in eng.open_transfers() if not t.phase.startswith("finished")] == []
    for t in eng.open_transfers():
        assert eng.imageio.get_ticket(t.ticket) is None
    assert not any(d.locked for d in vm.disks)


def test_ovirt_vm_cold_through_flow_two(tmp_path: Path, ovirt: tuple[Engine, VmRecord]) -> None:
    eng, vm = ovirt
    stack = LocalStack(tmp_path / "stack").start()
    try:
        recorder = scenario.start(stack, eng, vm)
        done = stack.wait_for("migration m1", lambda ev: finished(ev, "m1"), recorder, 600)
        assert (done["succeeded"], done["failed"]) == (1, 0), done
        time.sleep(1)
        events = recorder.events()
    finally:
        stack.close()

    # Then the VM went through flow 2, in order, after a shutdown through the engine
    steps = [d["step"] for d in of_type(events, "migration.step_started", vm.id)]
    assert steps == scenario.RAW_COPY_FLOW2
    assert [a for _n, a in eng.actions] == ["shutdown"]
    assert vm.status == "down"
    # and one image transfer carried the disk, finalized, its ticket gone
    assert list(eng.ended.values()) == ["finished_success"]
    nothing_left(eng, vm)
    # and the copy equals the test guest's disk
    [copy] = of_type(events, "volume.disks_copied", vm.id)
    [disk] = copy["disks"]
    src = open_source(ImageRef(path=str(vm.disks[0].image)))
    try:
        expected = copy_engine.digest(src).digest
    finally:
        src.close()
    assert disk["source"] == disk["target"] and disk["source"]["digest"] == expected
    # and the prime volume is gone, the claim bound to the copy
    [bound] = copy["volumes"]
    assert disk["volume"] == f"{bound['name']}-prime"
    claims = [p.name for p in (stack.data_dir / "storage/volumes/claims/rhv").iterdir()]
    assert not [n for n in claims if "prime" in n]


def test_cancel_mid_transfer_leaves_no_transfer_and_the_vm_running(
    tmp_path: Path, ovirt: tuple[Engine, VmRecord]
) -> None:
    eng, vm = ovirt
    env = {"FERRY_PLATFORM__LOCAL__MAX_RATE": str(PACED)}
    stack = LocalStack(tmp_path / "stack", env=env).start()
    try:
        recorder = scenario.start(stack, eng, vm)
        # When the migration is canceled while the disk copies
        stack.wait_for(
            "the copy under way",
            lambda ev: [p for p in of_type(ev, "volume.disk_progress", vm.id) if p["done"] > 0],
            recorder,
            timeout=300,
        )
        during = not of_type(recorder.events(), "volume.disks_copied", vm.id)
        open_during = [t.phase for t in eng.open_transfers()]
        assert stack.ferry("cancel", "m1").returncode == 0
        assert during, "the copy had finished before the cancel"
        stack.wait_for(
            "the VM canceled", lambda ev: of_type(ev, "migration.vm_canceled", vm.id), recorder, 300
        )
        stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=300)
        deadline = time.monotonic() + 60
        while (eng.imageio.exports or vm.status != "up") and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stack.close()

    # Then it was canceled while its one transfer was open, and nothing is left of it
    assert open_during == ["transferring"]
    assert list(eng.ended.values()) == ["finished_failure"]
    nothing_left(eng, vm)
    # and the VM runs again, as it did before the migration
    assert vm.status == "up"
    assert [a for _n, a in eng.actions] == ["shutdown", "start"]


def test_a_transfer_left_by_a_killed_volume_service_is_ended_on_cancel(
    tmp_path: Path, ovirt: tuple[Engine, VmRecord]
) -> None:
    eng, vm = ovirt
    env = {"FERRY_PLATFORM__LOCAL__MAX_RATE": str(PACED)}
    stack = LocalStack(tmp_path / "stack", env=env).start()
    try:
        recorder = scenario.start(stack, eng, vm)
        stack.wait_for(
            "the copy under way",
            lambda ev: [p for p in of_type(ev, "volume.disk_progress", vm.id) if p["done"] > 0],
            recorder,
            timeout=300,
        )
        # When the volume-service is killed -9 mid-copy (its transfer stays open at the
        # engine, the disk locked) and the migration is then canceled
        stack.kill("volume-service")
        copied = of_type(recorder.events(), "volume.disks_copied", vm.id)
        assert not copied, "the copy had finished before the kill"
        left = [t.phase for t in eng.open_transfers()]
        assert stack.ferry("cancel", "m1").returncode == 0
        stack.wait_for(
            "the VM canceled", lambda ev: of_type(ev, "migration.vm_canceled", vm.id), recorder, 300
        )
        stack.restart("volume-service")
        stack.wait_for("the end", lambda ev: finished(ev, "m1"), recorder, timeout=300)
        deadline = time.monotonic() + 60
        while (eng.imageio.exports or vm.status != "up") and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stack.close()

    # Then the transfer the killed copy held was ended, and the VM runs again
    assert left == ["transferring"]
    assert list(eng.ended.values()) == ["finished_failure"]
    nothing_left(eng, vm)
    assert vm.status == "up"


MiB = 1 << 20


def test_ovirt_vm_warm_through_flow_one_by_incremental_backups(tmp_path: Path) -> None:
    conn = libvirt.open(libvirtd.uri_or_skip())
    guest = libvirtd.define_guest(conn, [64 * MiB], fill=[(0, 4 * MiB, 0x11)])
    env = {
        "FERRY_CONTROLLER__SHUTDOWN_TIMEOUT_SECONDS": "3",  # no OS: the button is ignored
        "FERRY_CONTROLLER__RAW_COPY_INSPECTION": "off",
    }
    try:
        with scenario.domain_vm(tmp_path, guest, 64 * MiB) as (eng, vm):
            stack = LocalStack(tmp_path / "stack", env=env).start()
            try:
                # Given a warm plan of the running VM, a precopy every 5 s
                recorder = scenario.start(stack, eng, vm, warm=True, precopy_seconds=5)
                # When the guest writes 1 MiB after the full round, and again each time a
                # precopy carried the write before
                writes = [(20 * MiB, 0x5C), (40 * MiB, 0x6D), (50 * MiB, 0x7E)]
                scenario.write_between_rounds(stack, recorder, vm, guest, writes, timeout=300)
                # And the precopies end with a cutover
                cut = stack.ferry("cutover", "m1", "--at", "now")
                assert cut.returncode == 0, cut.stdout + cut.stderr
                done = stack.wait_for("m1", lambda ev: finished(ev, "m1"), recorder, 600)
                assert (done["succeeded"], done["failed"]) == (1, 0), done
                time.sleep(1)
                events = recorder.events()
            finally:
                stack.close()

            # Then a full round and precopies ran while it ran, each write exactly one
            # precopy's change, and the last delta the one before the cutover
            rounds = of_type(events, "volume.disks_copied", vm.id)
            assert [r["precopy"] for r in rounds[:3]] == [0, 1, 2]
            changed = [r["changed"] for r in rounds[1:]]
            assert sum(changed) == 3 * MiB and set(changed) <= {0, MiB}
            steps = [d["step"] for d in of_type(events, "migration.step_started", vm.id)]
            assert "PowerOffSource" in steps and "ConvertGuest" not in steps
            # and the VM was powered off through the engine (forced: no OS to answer)
            assert [a for _n, a in eng.actions] == ["shutdown", "stop"]
            assert vm.status == "down" and not guest.dom.isActive()
            # and the target equals the source disk bit for bit, the writes on it
            [final] = rounds[-1]["disks"]
            assert final["source"] == final["target"]
            assert final["source"]["digest"] == guest_digest(guest.disks["vda"])
            [volume] = rounds[-1]["volumes"]
            with Path(volume["path"]).open("rb") as target:
                for offset, pattern in writes:
                    target.seek(offset)
                    assert target.read(MiB) == bytes([pattern]) * MiB
            # and nothing is left: no checkpoint (engine, libvirt, file), backup, transfer
            assert eng.backups.of_vm(vm) == [] and guest.dom.listAllCheckpoints(0) == []
            assert vdsm.bitmaps(guest.disks["vda"]) == []
            assert all(b.ended for b in eng.backups.backups.values())
            assert eng.imageio.tickets == set()
            nothing_left(eng, vm)
    finally:
        guest.remove()
        conn.close()
