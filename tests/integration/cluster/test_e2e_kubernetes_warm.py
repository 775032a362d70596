"""Flow 1 (warm) from oVirt through the four services, as processes, on the kubernetes platform.

The services run with ``FERRY_PLATFORM__KIND=kubernetes`` against the cluster stand-in
(served by this test's event loop). The source is the oVirt engine stand-in over a
running libvirt guest (no operating system: it is written to through QEMU's ``qemu-io``
between rounds), each round one incremental backup whose image transfer the **real
ovirt-imageio daemon** serves. ``skipGuestConversion`` keeps it to the copy. From the
cluster's side: one plain claim on ``WaitForFirstConsumer`` storage, one Ferry transfer
pod per round on it (round 0 a full copy, every later round a delta job of the round's
changed extents, reading the transfer's URL from its Secret), each pod and Secret gone
after its round, the claim's bytes equal to the source disk after the cutover, and the
VirtualMachine on the claim.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any

import libvirt
import msgspec
import pytest

from ferry.platform.kubernetes import fill
from ferry.testing import libvirtd
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.migration import finished, of_type
from ferry.testing.ovirt import scenario
from ferry.testing.ovirt.engine import Engine, VmRecord
from ferry.testing.stack import LocalStack

sys.path.insert(0, str(Path(__file__).parent))
import standin_images
from standin_images import posted

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(600)]

NS = scenario.NAMESPACE
MiB = 1 << 20


def _migrate(
    stack: LocalStack, eng: Engine, vm: VmRecord, guest: libvirtd.Guest
) -> list[dict[str, Any]]:
    """A warm plan, a precopy every 3 s, 1 MiB written after the full round and again
    once a precopy carried it, then the cutover; the events until the migration ended."""
    recorder = scenario.start(stack, eng, vm, warm=True, precopy_seconds=3)
    scenario.write_between_rounds(stack, recorder, vm, guest, WRITES, timeout=120)
    cut = stack.ferry("cutover", "m1", "--at", "now")
    assert cut.returncode == 0, cut.stdout + cut.stderr
    done = stack.wait_for("m1", lambda ev: finished(ev, "m1"), recorder, 240)
    assert (done["succeeded"], done["failed"]) == (1, 0), done
    return recorder.events()


WRITES = [(20 * MiB, 0x5C), (40 * MiB, 0x6D)]


async def test_warm_ovirt_vm_through_flow_one_with_a_transfer_pod_per_round(
    e2e_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = e2e_cluster
    conn = libvirt.open(libvirtd.uri_or_skip())
    guest = libvirtd.define_guest(conn, [64 * MiB], fill=[(0, 4 * MiB, 0x11)])
    env = standin_images.services_env(
        cluster,
        FERRY_CONTROLLER__SHUTDOWN_TIMEOUT_SECONDS="3",  # no OS: the button is ignored
        FERRY_CONTROLLER__RAW_COPY_INSPECTION="off",
    )
    try:
        with scenario.domain_vm(tmp_path, guest, 64 * MiB) as (eng, vm):
            stack = LocalStack(tmp_path / "stack", env=env)
            await asyncio.to_thread(stack.start)
            try:
                # Given a warm plan of the running VM; When it is migrated with writes
                # between the rounds, then cut over
                events = await asyncio.to_thread(_migrate, stack, eng, vm, guest)
            finally:
                await asyncio.to_thread(stack.close)

            # Then a full round and precopies ran, each write exactly one precopy's change
            rounds = of_type(events, "volume.disks_copied", vm.id)
            assert [r["precopy"] for r in rounds[:2]] == [0, 1] and len(rounds) >= 3
            assert rounds[-1]["checkpoint"] == ""  # the last delta: nothing left at the source
            changed = [r["changed"] for r in rounds[1:]]
            assert sum(changed) == 2 * MiB and set(changed) <= {0, MiB}
            assert [a for _n, a in eng.actions] == ["shutdown", "stop"]
            # and the volume was one plain claim, never a DataVolume
            [claim] = posted(cluster, "persistentvolumeclaims", "")
            assert "dataSourceRef" not in claim["spec"]
            assert posted(cluster, "datavolumes", "") == []
            name = claim["metadata"]["name"]
            # and each round was a transfer pod on it: a full job, then delta jobs of the
            # changed extents, the URL and its ticket in the Secret only
            pods = posted(cluster, "pods", "transfer-")
            jobs = [
                msgspec.json.decode(base64.b64decode(s["data"]["job.json"]), type=fill.Job)
                for s in posted(cluster, "secrets", "transfer-")
            ]
            assert len(pods) == len(jobs) == len(rounds)
            assert not jobs[0].delta and all(j.delta for j in jobs[1:])
            assert jobs[-1].last and not any(j.last for j in jobs[:-1])
            assert [sum(e.length for e in j.extents) for j in jobs[1:]] == changed
            for pod, job in zip(pods, jobs, strict=True):
                assert job.source.url.startswith(f"https://127.0.0.1:{eng.imageio.port}/images/")
                assert job.source.url.rsplit("/", 1)[-1] not in json.dumps(pod)
                claims = [v.get("persistentVolumeClaim") for v in pod["spec"]["volumes"]]
                assert {"claimName": name} in claims
            # and the claim holds the source disk: the final round compared both whole
            [final] = rounds[-1]["disks"]
            assert final["source"] == final["target"]
            assert final["source"]["algorithm"] != "unverified"
            with standin_images.claim_image(cluster, NS, name).open("rb") as target:
                for offset, pattern in [(0, 0x11), *WRITES]:
                    target.seek(offset)
                    assert target.read(MiB) == bytes([pattern]) * MiB
            # and nothing is left: no pod or Secret of a round, no ticket, no checkpoint
            assert cluster.store.list(resources.POD, NS) == []
            assert [s for s in cluster.store.list(resources.SECRET, NS)
                    if s["metadata"]["name"].startswith("transfer-")] == []  # fmt: skip
            assert eng.imageio.tickets == set()
            assert guest.dom.listAllCheckpoints(0) == []
            # and the VirtualMachine was made on the claim
            [made] = cluster.store.list(resources.VIRTUAL_MACHINE, NS)
            volumes = made["spec"]["template"]["spec"]["volumes"]
            assert {"claimName": name} in [v.get("persistentVolumeClaim") for v in volumes]
    finally:
        guest.remove()
        conn.close()
