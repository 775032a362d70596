"""Flow 2 from oVirt through the four services, as separate processes, on the kubernetes platform.

The services run with ``FERRY_PLATFORM__KIND=kubernetes`` against the cluster stand-in
(served by this test's event loop). The source is the oVirt engine stand-in answering
the real ``ovirtsdk4``, the test guest's disk served by the **real ovirt-imageio daemon**
through a ticket per image transfer (as in ``tests/e2e/test_ovirt.py``).
``skipGuestConversion`` keeps it to the copy. The journey, from the cluster's side, on
``WaitForFirstConsumer`` storage: the claim with Ferry's populator ``dataSourceRef``,
pvcinit giving it a node, the prime claim on that node, the populator pod run by the
stand-in kubelet (Ferry's copy engine reading the disk the imageio daemon serves), the
prime's PersistentVolume handed to the target claim, the prime claim deleted, the
claim's bytes equal to the source disk's, every image transfer finished at the engine
with no ticket left, and the VirtualMachine.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ferry.platform.kubernetes import fill, objects
from ferry.platform.kubernetes.binding import SELECTED_NODE
from ferry.proto import label
from ferry.testing.cluster import resources
from ferry.testing.cluster.api import Request
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.migration import finished, of_type, stored_until_ended
from ferry.testing.ovirt import scenario
from ferry.testing.ovirt.engine import Engine, VmRecord
from ferry.testing.stack import LocalStack

sys.path.insert(0, str(Path(__file__).parent))
import standin_images

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[3]
NS = scenario.NAMESPACE


@pytest.fixture
def ovirt(tmp_path: Path) -> Iterator[tuple[Engine, VmRecord]]:
    with scenario.guest_vm(tmp_path, REPO) as made:
        yield made


def _plan(stack: LocalStack, eng: Engine, vm: VmRecord) -> None:
    scenario.apply_plan(stack, eng, vm)
    scenario.migrate(stack)


def _sha256(path: Path, size: int) -> str:
    """The checksum of the first ``size`` bytes of ``path`` (a claim is rounded up)."""
    digest, left = hashlib.sha256(), size
    with path.open("rb") as f:
        while left:
            chunk = f.read(min(left, 1 << 20))
            assert chunk, f"{path} is shorter than {size} bytes"
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def _writes(cluster: Cluster, method: str, plural: str) -> list[Request]:
    return [
        r
        for r in cluster.api.requests
        if r.method == method and r.path.split("/")[-1 if method == "POST" else -2] == plural
    ]


def _named(requests: list[Request], prefix: str) -> list[dict[str, Any]]:
    return [r.body for r in requests if r.body["metadata"]["name"].startswith(prefix)]


async def test_flow2_from_ovirt_through_a_populator_on_waitforfirstconsumer_storage(
    e2e_cluster: Cluster, ovirt: tuple[Engine, VmRecord], tmp_path: Path
) -> None:
    cluster = e2e_cluster
    eng, vm = ovirt
    # Given the four services on the kubernetes platform, pointed at the stand-in
    env = standin_images.services_env(cluster)
    stack = LocalStack(tmp_path / "stack", env=env)
    await asyncio.to_thread(stack.start)
    try:
        # When the oVirt VM is migrated cold through flow 2
        await asyncio.to_thread(_plan, stack, eng, vm)
        started = time.monotonic()
        events = await stored_until_ended(stack, "m1", within=900, poll=1)
        seconds = time.monotonic() - started
    finally:
        await asyncio.to_thread(stack.close)

    # Then it completed, through flow 2's steps in order
    done = finished(events, "m1")
    assert done is not None, [e["type"] for e in events][-20:]
    assert (done["succeeded"], done["failed"]) == (1, 0), done
    steps = [d["step"] for d in of_type(events, "migration.step_started", vm.id)]
    assert steps == scenario.RAW_COPY_FLOW2
    assert [a for _n, a in eng.actions] == ["shutdown"]

    # And the target claim named Ferry's populator, and pvcinit gave it a node
    [target] = [
        b
        for b in _named(_writes(cluster, "POST", "persistentvolumeclaims"), "")
        if "dataSourceRef" in b["spec"]
    ]
    name = target["metadata"]["name"]
    assert target["spec"]["dataSourceRef"] == {
        "apiGroup": objects.POPULATOR_GROUP,
        "kind": objects.POPULATOR_KIND,
        "name": name,
    }
    assert target["spec"]["storageClassName"] == "standard"
    [pvcinit] = _named(_writes(cluster, "POST", "pods"), "pvcinit")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pvcinit["spec"]["volumes"]]
    assert name in claims
    bound = cluster.get(resources.PVC, NS, name)
    assert bound is not None
    node = bound["metadata"]["annotations"][SELECTED_NODE]
    prime = f"populate-{bound['metadata']['uid']}"
    # And the prime claim was made on that node, the populator pod pinned there
    [prime_claim] = _named(_writes(cluster, "POST", "persistentvolumeclaims"), prime)
    assert prime_claim["metadata"]["annotations"][SELECTED_NODE] == node
    pods = _named(_writes(cluster, "POST", "pods"), prime)
    assert pods and all(p["spec"]["nodeName"] == node for p in pods)
    assert pods[0]["metadata"]["labels"][label.MIGRATION] == "m1"
    # And the pod's job (its Secret) has it read the image transfer on the imageio
    # daemon over HTTPS, not a socket of the volume-service's; the ticket nowhere else
    [secret] = _named(_writes(cluster, "POST", "secrets"), prime)
    job = msgspec.json.decode(base64.b64decode(secret["data"]["job.json"]), type=fill.Job)
    assert job.source.url.startswith(f"https://127.0.0.1:{eng.imageio.port}/images/")
    assert job.source.qemu_options is None and not job.source.nbd_socket
    assert job.source.ca.strip() == eng.imageio.ca_file.read_text().strip()
    ticket = job.source.url.rsplit("/", 1)[-1]
    assert all(ticket not in json.dumps(p) for p in pods)
    # And the stand-in kubelet ran it: Ferry's copy engine, its checksums in its log
    log = (cluster.kubelet.pod_dir(NS, prime) / "log").read_text()
    lines = [msgspec.json.decode(t, type=fill.Line) for t in log.splitlines() if t[:1] == "{"]
    [result] = [x for x in lines if isinstance(x, fill.Done)]
    assert result.source == result.target and result.source.algorithm != "unverified"

    # And the prime's PersistentVolume was handed to the target claim, the prime deleted
    assert bound["status"]["phase"] == "Bound"
    pv = cluster.get(resources.PV, "", bound["spec"]["volumeName"])
    assert pv is not None
    assert pv["spec"]["claimRef"]["name"] == name
    assert pv["spec"]["claimRef"]["uid"] == bound["metadata"]["uid"]
    rebinds = [
        r.body["spec"]["claimRef"]
        for r in _writes(cluster, "PATCH", "persistentvolumes")
        if r.path.endswith(f"/{bound['spec']['volumeName']}")
    ]
    assert [ref["name"] for ref in rebinds] == [name]
    deleted = [r.path for r in cluster.api.requests if r.method == "DELETE"]
    assert f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{prime}" in deleted
    assert cluster.get(resources.PVC, NS, prime) is None
    assert cluster.get(resources.POD, NS, prime) is None
    assert cluster.get(resources.SECRET, NS, prime) is None

    # And the claim holds the source disk's bytes
    source = vm.disks[0].image
    written = standin_images.volume_image(pv)
    size = source.stat().st_size
    assert await asyncio.to_thread(_sha256, written, size) == await asyncio.to_thread(
        _sha256, source, size
    )

    # And every image transfer finished at the engine, no ticket left on the daemon
    assert list(eng.ended.values()) == ["finished_success"]
    assert eng.imageio.exports == {}
    for transfer in eng.open_transfers():
        assert transfer.phase.startswith("finished")
        assert eng.imageio.get_ticket(transfer.ticket) is None
    assert not any(d.locked for d in vm.disks)

    # And the VirtualMachine was made, on the claim, and no temporary pod is left
    [made] = cluster.store.list(resources.VIRTUAL_MACHINE, NS)
    volumes = made["spec"]["template"]["spec"]["volumes"]
    assert any((v.get("persistentVolumeClaim") or {}).get("claimName") == name for v in volumes)
    assert [p["metadata"]["name"] for p in cluster.store.list(resources.POD, NS)] == []
    print(f"flow 2 on kubernetes (stand-in): {seconds:.0f}s; VM {made['metadata']['name']}")
