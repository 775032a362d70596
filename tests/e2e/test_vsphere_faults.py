"""A warm vSphere migration whose volume-service is killed -9 inside a delta precopy.

A data-only disk (no operating system: the data path is the point) on a simulated
VM with CBT on, in a warm plan, copied at a capped rate so that the delta precopy
after a 16 MiB guest write lasts seconds. The restarted service gets the round
again and, finding the snapshot the killed attempt took for that round, sees the
same picture with the same checkpoint: its copy resumes inside the round, so it
writes only what the killed attempt had not made durable. What counts is the round's
ledger on disk, not the progress events (:mod:`ferry.testing.ledgers`; the test
once killed just after a progress event, before its range was durable, and saw
the whole round copied again). After the cutover the
target equals the source, and no snapshot of Ferry's is left on the VM.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.platform.copy import engine, source
from ferry.platform.images import ImageRef
from ferry.testing.ledgers import delta_durable, wait_delta_durable
from ferry.testing.stack import LocalStack
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Endpoint
from ferry.testing.vcsim.stack import prepare, rounds, vsphere_objects

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

MiB = 1024 * 1024
SIZE = 32 * MiB
RATE = 2 * MiB  # bytes per second: the 16 MiB precopy takes about 8 s
WRITE = 16 * MiB


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    env = {
        "FERRY_PLATFORM__LOCAL__MAX_RATE": str(RATE),
        "FERRY_PLATFORM__LOCAL__CHECKPOINT_SECONDS": "0.2",
    }
    stack = LocalStack(tmp_path / "stack", env=env)
    try:
        yield stack.start()
    finally:
        stack.close()


def copied(events: list[dict[str, Any]], vm: str, precopy: int) -> list[dict[str, Any]]:
    return [r for r in rounds(events, vm) if r["precopy"] == precopy and r["checkpoint"]]


def test_a_volume_service_killed_in_a_delta_precopy_resumes_inside_the_round(
    stack: LocalStack, vcsim: Endpoint
) -> None:
    t0 = time.monotonic()
    # Given a running VM with CBT on and a 32 MiB disk holding 1 MiB of data, in a warm plan
    raw = stack.root / "data.raw"
    with raw.open("wb") as out:
        out.truncate(SIZE)
        out.write(os.urandom(MiB))
    with arrange.admin(vcsim) as si:
        flat = arrange.place_disk(si, "DC0_H0_VM0", raw, cbt=True)
        vm_ref = arrange.find_vm(si, "DC0_H0_VM0")
        vm = vm_ref._moId
        # (10 s between rounds: time for a loaded test to write before precopy 1 begins)
        text = vsphere_objects(vcsim, ["DC0_H0_VM0"], plan="warm", warm=True, interval=10)
        prepare(stack, vcsim, text)
        recorder = stack.record_events()
        time.sleep(2)
        assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0
        # And past its first round, the guest wrote 16 MiB (none of it during a round)
        stack.wait_for("round 0", lambda ev: copied(ev, vm, 0), recorder, timeout=120)
        with flat.open("r+b") as out:
            out.seek(8 * MiB)
            out.write(os.urandom(WRITE))
        # And precopy 1 is under way, part of it durable on the target
        wait_delta_durable(stack.root, vm, WRITE)

        # When the volume-service is killed -9 and restarted
        stack.kill("volume-service")
        at_kill = recorder.events()
        killed_at = delta_durable(stack.root, vm)
        assert 0 < killed_at < WRITE, killed_at
        assert not copied(at_kill, vm, 1), "precopy 1 had ended before the kill"
        left_by_kill = arrange.snapshot_names(vm_ref)
        stack.restart("volume-service")

        # Then the round is delivered again and finished
        redone = stack.wait_for("precopy 1", lambda ev: copied(ev, vm, 1), recorder, timeout=120)
        # from the snapshot the killed attempt took (no other one was taken for it)
        assert redone[0]["checkpoint"] in left_by_kill, (redone[0], left_by_kill)
        assert len(left_by_kill) == 2, left_by_kill  # round 0's and the killed attempt's
        # without copying the first round again, listing the same 16 MiB as changed
        events = recorder.events()
        assert len(copied(events, vm, 0)) == 1
        [disk] = redone[0]["disks"]
        assert redone[0]["changed"] == WRITE
        # and resumed inside the round: what the killed attempt had made durable is not
        # copied again, and nothing else is skipped
        assert disk["bytes_copied"] == WRITE - killed_at, (disk, killed_at)
        again = disk["bytes_copied"]
        print(f"\nkilled at {killed_at} B of precopy 1; redone round copied {again} B")

        # And after the cutover the target equals the source, with no snapshot left
        assert stack.ferry("cutover", "m1", "--at", "now").returncode == 0
        final = stack.wait_for(
            "the final round",
            lambda ev: [r for r in rounds(ev, vm) if not r["checkpoint"]],
            recorder,
            timeout=120,
        )
        snapshots_left = arrange.snapshot_names(vm_ref)
    [last] = final[0]["disks"]
    whole = engine.digest(source.open_source(ImageRef(path=str(flat))))
    assert last["target"]["digest"] == last["source"]["digest"] == whole.digest
    assert snapshots_left == []
    # (no OS to convert: the migration ends here)
    assert stack.ferry("cancel", "m1").returncode == 0
    print(f"total {time.monotonic() - t0:.0f} s")
