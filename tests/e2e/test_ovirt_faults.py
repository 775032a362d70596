"""A warm oVirt migration whose volume-service is killed -9 inside a delta precopy.

The four services as processes; the engine stand-in answering the real ``ovirtsdk4``
and the real imageio daemon serving the backups' exports; the VM backed by a running
libvirt domain with no operating system (written to through QEMU's ``qemu-io``), its
copies paced so that the precopy after a 16 MiB write lasts seconds.

The killed attempt leaves an incremental backup in progress at the engine, its
image transfer open and the disk locked. The restarted service gets the round again
and takes that backup over (the VM is still up, the backup is from the same checkpoint
and of the same disks): the same picture under the same new checkpoint, so its copy
resumes inside the round and writes only what the killed attempt had not made durable.
After the cutover the target equals the source bit for bit, and nothing is left: no
backup in progress, no checkpoint (engine, libvirt, bitmap), no transfer, no ticket.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import libvirt
import pytest

from ferry.testing import libvirtd
from ferry.testing.digests import guest_digest
from ferry.testing.ledgers import delta_durable, wait_delta_durable
from ferry.testing.migration import finished, of_type
from ferry.testing.ovirt import scenario, vdsm
from ferry.testing.stack import LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

MiB = 1 << 20
SIZE = 64 * MiB
WRITE = 16 * MiB
RATE = 2 * MiB  # bytes per second: the 16 MiB precopy takes about 8 s
AT = 20 * MiB


def copied(events: list[dict[str, Any]], vm: str, precopy: int) -> list[dict[str, Any]]:
    """Precopy ``precopy``'s rounds (the last round, after the power-off, has no checkpoint)."""
    found = of_type(events, "volume.disks_copied", vm)
    return [c for c in found if c["precopy"] == precopy and c["checkpoint"]]


def test_a_volume_service_killed_in_a_warm_ovirt_round_takes_its_backup_over_and_resumes(
    tmp_path: Path,
) -> None:
    conn = libvirt.open(libvirtd.uri_or_skip())
    guest = libvirtd.define_guest(conn, [SIZE], fill=[(0, 4 * MiB, 0x11)])
    env = {
        "FERRY_CONTROLLER__SHUTDOWN_TIMEOUT_SECONDS": "3",  # no OS: the button is ignored
        "FERRY_CONTROLLER__RAW_COPY_INSPECTION": "off",
        "FERRY_PLATFORM__LOCAL__MAX_RATE": str(RATE),
        "FERRY_PLATFORM__LOCAL__CHECKPOINT_SECONDS": "0.2",
    }
    try:
        with scenario.domain_vm(tmp_path, guest, SIZE) as (eng, vm):
            stack = LocalStack(tmp_path / "stack", env=env).start()
            try:
                # Given a warm plan of the running VM past its full round, 16 MiB written since
                # (10 s between rounds: time for a loaded test to write before precopy 1)
                recorder = scenario.start(stack, eng, vm, warm=True, precopy_seconds=10)
                stack.wait_for("round 0", lambda ev: copied(ev, vm.id, 0), recorder, 300)
                guest.write("vda", AT, WRITE, 0x5C)
                # And precopy 1 under way, part of it durable on the target
                wait_delta_durable(stack.root, vm.id, WRITE)

                # When the volume-service is killed -9 and restarted
                stack.kill("volume-service")
                killed_at = delta_durable(stack.root, vm.id)
                assert not copied(recorder.events(), vm.id, 1), "precopy 1 had ended"
                left = eng.backups.in_progress(vm)
                left_transfers = [
                    t.phase for t in eng.open_transfers() if not t.phase.startswith("finished")
                ]
                stack.restart("volume-service")

                # Then precopy 1 is delivered again and done
                redone = stack.wait_for(
                    "precopy 1", lambda ev: copied(ev, vm.id, 1), recorder, timeout=300
                )
                # And the cutover ends the migration
                cut = stack.ferry("cutover", "m1", "--at", "now")
                assert cut.returncode == 0, cut.stdout + cut.stderr
                done = stack.wait_for("m1", lambda ev: finished(ev, "m1"), recorder, 600)
                assert (done["succeeded"], done["failed"]) == (1, 0), done
                time.sleep(1)
                events = recorder.events()
            finally:
                stack.close()

        # (the kill landed inside the round, with its backup and transfer open)
        assert 0 < killed_at < WRITE, killed_at
        assert left is not None and left_transfers, (left, left_transfers)
        # Then the round was done once, from the backup the killed attempt took (no other
        # backup was taken from round 0's checkpoint), listing the whole write
        assert len(copied(events, vm.id, 1)) == 1 and len(copied(events, vm.id, 0)) == 1
        assert redone[0]["checkpoint"] == left.checkpoint
        since = copied(events, vm.id, 0)[0]["checkpoint"]
        assert [b.id for b in eng.backups.backups.values() if b.since == since] == [left.id]
        assert left.ended and redone[0]["changed"] == WRITE
        # and resumed inside the round: what the killed attempt had made durable is not
        # copied again, and nothing else is skipped
        [disk_copy] = redone[0]["disks"]
        assert disk_copy["bytes_copied"] == WRITE - killed_at, (disk_copy, killed_at)
        # and the target equals the source bit for bit, the write on it
        rounds = of_type(events, "volume.disks_copied", vm.id)
        [final] = rounds[-1]["disks"]
        assert final["source"] == final["target"]
        assert final["source"]["digest"] == guest_digest(guest.disks["vda"])
        [volume] = rounds[-1]["volumes"]
        with Path(volume["path"]).open("rb") as target:
            target.seek(AT)
            assert target.read(WRITE) == bytes([0x5C]) * WRITE
        # and nothing is left: no checkpoint (engine, libvirt, bitmap), backup, transfer
        assert eng.backups.of_vm(vm) == [] and guest.dom.listAllCheckpoints(0) == []
        assert vdsm.bitmaps(guest.disks["vda"]) == []
        assert all(b.ended for b in eng.backups.backups.values())
        assert eng.imageio.tickets == set()
        assert not any(d.locked for d in vm.disks)
    finally:
        guest.remove()
        conn.close()
