"""Flow 1 (warm) from vSphere through the four services, as processes, on the kubernetes platform.

The services run with ``FERRY_PLATFORM__KIND=kubernetes`` against the cluster stand-in
(served by this test's event loop); the source is the vSphere API simulator with CBT on,
its VM's flat extent written to by the test between rounds as a guest would.
``skipGuestConversion`` keeps it to the copy. From the cluster's side: one plain claim on
``WaitForFirstConsumer`` storage and one Ferry transfer pod per round, which reads the
flat extent itself with ranged GETs over HTTPS (the datastore URL, the session's cookie
and the pinned certificate in the pod's Secret, never in the pod), round 0 in full and
every later round CBT's changed areas; the claim holds the source's bytes after the
cutover, and the VirtualMachine is made on it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from pyVmomi import vim

from ferry.platform.kubernetes import fill
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.migration import finished
from ferry.testing.stack import LocalStack
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Vcsim
from ferry.testing.vcsim.stack import prepare, rounds, vsphere_objects

sys.path.insert(0, str(Path(__file__).parent))
import standin_images
from standin_images import posted

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

NS = "e2e"
NAME = "DC0_H0_VM0"
MiB = 1 << 20
SIZE = 64 * MiB
WRITE = (20 * MiB, 0x5C)


def _arrange(si: Any) -> tuple[str, Path]:
    """CBT on and a 64 MiB disk with 4 MiB of data: the VM's id and its flat extent."""
    vm_ref = arrange.find_vm(si, NAME)
    [disk] = [d for d in vm_ref.config.hardware.device if isinstance(d, vim.vm.device.VirtualDisk)]
    disk.capacityInBytes, disk.capacityInKB = SIZE, SIZE // 1024
    change = vim.vm.device.VirtualDeviceSpec(operation="edit", device=disk)
    spec = vim.vm.ConfigSpec(deviceChange=[change], changeTrackingEnabled=True)
    arrange.run(vm_ref.ReconfigVM_Task(spec))
    flat = arrange.datastore_dir(si) / NAME / "disk1-flat.vmdk"
    with flat.open("wb") as out:
        out.truncate(SIZE)
        out.write(bytes([0x11]) * 4 * MiB)
    return str(vm_ref._moId), flat


def _migrate(stack: LocalStack, vm: str, flat: Path) -> list[dict[str, Any]]:
    """Round 0, a write, a precopy that carried it, the cutover; the events to the end."""
    recorder = stack.record_events()
    time.sleep(1)
    assert stack.ferry("migrate", "warm", "--name", "m1").returncode == 0
    stack.wait_for("round 0", lambda ev: rounds(ev, vm), recorder, timeout=240)
    offset, pattern = WRITE
    with flat.open("r+b") as out:
        out.seek(offset)
        out.write(bytes([pattern]) * MiB)
    stack.wait_for(
        "a precopy of the write",
        lambda ev: [r for r in rounds(ev, vm) if r["precopy"] > 0 and r["changed"]],
        recorder,
        timeout=240,
    )
    cut = stack.ferry("cutover", "m1", "--at", "now")
    assert cut.returncode == 0, cut.stdout + cut.stderr
    done = stack.wait_for("m1", lambda ev: finished(ev, "m1"), recorder, 240)
    assert (done["succeeded"], done["failed"]) == (1, 0), done
    return recorder.events()


async def test_warm_vsphere_vm_through_flow_one_with_transfer_pods_reading_the_datastore(
    e2e_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = e2e_cluster
    env = standin_images.services_env(cluster, FERRY_CONTROLLER__RAW_COPY_INSPECTION="off")
    with Vcsim() as sim:
        assert sim.endpoint is not None
        endpoint = sim.endpoint
        with arrange.admin(endpoint) as si:
            vm, flat = _arrange(si)
        stack = LocalStack(tmp_path / "stack", env=env)
        await asyncio.to_thread(stack.start)
        try:
            # Given a warm raw-copy plan of the running VM, a precopy every 3 s
            text = vsphere_objects(
                endpoint, [NAME], plan="warm", warm=True, interval=3, raw_copy=True
            )
            await asyncio.to_thread(prepare, stack, endpoint, text)
            started = time.monotonic()
            # When it is migrated with a guest write between the rounds, then cut over
            events = await asyncio.to_thread(_migrate, stack, vm, flat)
            seconds = time.monotonic() - started
        finally:
            await asyncio.to_thread(stack.close)
        with arrange.admin(endpoint) as si:
            snapshots_left = arrange.snapshot_names(arrange.find_vm(si, NAME))
        source = flat.read_bytes()  # (the simulator's datastore goes with it)

    # Then round 0 read the data, and the precopies together exactly the 1 MiB written
    copied = rounds(events, vm)
    changed = [r["changed"] for r in copied]
    assert changed[0] >= 4 * MiB and sum(changed[1:]) == MiB, changed
    assert copied[-1]["checkpoint"] == ""  # the last round: nothing left at the source
    # and each round was a transfer pod on the one plain claim, reading the datastore
    # over HTTPS: a full job, then delta jobs of CBT's areas; the cookie in Secrets only
    [claim] = posted(cluster, "persistentvolumeclaims", "")
    assert posted(cluster, "datavolumes", "") == []
    pods = posted(cluster, "pods", "transfer-")
    jobs = [
        msgspec.json.decode(base64.b64decode(s["data"]["job.json"]), type=fill.Job)
        for s in posted(cluster, "secrets", "transfer-")
    ]
    assert len(pods) == len(jobs) == len(copied)
    assert not jobs[0].delta and all(j.delta for j in jobs[1:]) and jobs[-1].last
    for pod, job in zip(pods, jobs, strict=True):
        ranged = job.source.http_range
        assert ranged is not None and ranged.url.startswith(endpoint.url.rsplit("/", 1)[0])
        assert ranged.cookie and ranged.cookie not in json.dumps(pod)
        claims = [v.get("persistentVolumeClaim") for v in pod["spec"]["volumes"]]
        assert {"claimName": claim["metadata"]["name"]} in claims
    # and the claim holds the source's bytes: the last round compared both whole
    [final] = copied[-1]["disks"]
    assert final["source"] == final["target"] and final["source"]["algorithm"] != "unverified"
    with standin_images.claim_image(cluster, NS, claim["metadata"]["name"]).open("rb") as target:
        assert target.read(SIZE) == source
    # and nothing is left: no pod or Secret of a round, no snapshot on the VM
    assert cluster.store.list(resources.POD, NS) == []
    assert [s for s in cluster.store.list(resources.SECRET, NS)
            if s["metadata"]["name"].startswith("transfer-")] == []  # fmt: skip
    assert snapshots_left == []
    # and the VirtualMachine was made on the claim
    [made] = cluster.store.list(resources.VIRTUAL_MACHINE, NS)
    volumes = made["spec"]["template"]["spec"]["volumes"]
    assert {"claimName": claim["metadata"]["name"]} in [
        v.get("persistentVolumeClaim") for v in volumes
    ]
    print(f"\nwarm vSphere on kubernetes (stand-in): {seconds:.0f} s; bytes per round {changed}")
