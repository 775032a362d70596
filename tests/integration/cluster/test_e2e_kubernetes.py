"""Flow 3 through the four services, as separate processes, on the kubernetes platform.

The services run with ``FERRY_PLATFORM__KIND=kubernetes`` against the cluster stand-in
(served by this test's event loop); the test guest's OVA is on an NFS share (a local
directory standing for the export: no NFS server runs here). The journey: blank
DataVolumes, pvcinit binding them on WaitForFirstConsumer storage, a conversion pod
running the real virt-v2v over Ferry's reading of the OVA from the share (and a
virt-inspector pod), the VirtualMachine, its instance Running: the stand-in's KubeVirt
boots the converted disk under QEMU from the instance's domain spec, and the guest
reaches its login prompt on the serial console.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from pathlib import Path

import pytest

from ferry.proto import label
from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.migration import (
    FLOW3,
    apply_yaml,
    finished,
    guest_ova,
    of_type,
    ova_objects,
    start_migration,
    stored_until_ended,
)
from ferry.testing.stack import LocalStack

sys.path.insert(0, str(Path(__file__).parent))
import standin_images
from standin_images import posted

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[3]
SHARE = "nfs://nfs.example/exports/ova"


async def test_flow3_from_an_ova_on_a_share_through_four_services_on_kubernetes(
    e2e_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = e2e_cluster
    # Given the test guest's OVA on a share the services (and conversion pods) mount
    guest = await asyncio.to_thread(guest_ova, REPO)
    share = tmp_path / "share"
    share.mkdir()
    shutil.copyfile(guest["ova"], share / "vm-a.ova")
    cluster.kubelet.exports["nfs.example:/exports/ova"] = share
    # And the four services on the kubernetes platform, pointed at the stand-in
    # virt-inspector in a pod is shown by the vSphere flow 3 e2e; here virt-v2v's own
    # inspection is reported (a minute less under TCG)
    env = standin_images.services_env(cluster, FERRY_CONVERSION__VERIFY_WITH_INSPECTOR="false")
    stack = LocalStack(tmp_path / "stack", env=env)
    await asyncio.to_thread(stack.start)
    try:
        text = ova_objects(share, ["vm-a/ferry-test-guest"], plan="e2e")
        text = text.replace(f'url: "{share}"', f'url: "{SHARE}", settings: {{path: "{share}"}}')
        await asyncio.to_thread(apply_yaml, stack, text)
        started = time.monotonic()

        # When the plan is migrated
        await asyncio.to_thread(start_migration, stack, "e2e", "m1")
        events = await stored_until_ended(
            stack, "m1", within=2000 - (time.monotonic() - started), poll=2
        )
        seconds = time.monotonic() - started
    finally:
        await asyncio.to_thread(stack.close)

    # Then it completed, step by step in flow 3's order
    done = finished(events, "m1")
    assert done is not None, [e["type"] for e in events][-20:]
    steps = [d["step"] for d in of_type(events, "migration.step_started")]
    assert [s for s in FLOW3 if s in steps] == [s for s in steps if s in FLOW3]
    # And it went through the cluster: blank DataVolumes, pvcinit, a conversion pod with
    # the share read-only and the claims at its own paths, a VirtualMachine running
    [dv] = posted(cluster, "datavolumes")
    assert "blank" in dv["spec"]["source"]
    assert posted(cluster, "pods", "pvcinit")
    [conversion] = posted(cluster, "pods", "full-conversion")
    volumes = conversion["spec"]["volumes"]
    assert any(v.get("nfs", {}).get("readOnly") for v in volumes)
    assert conversion["metadata"]["labels"][label.MIGRATION] == "m1"
    [vm] = cluster.store.list(resources.VIRTUAL_MACHINE, "e2e")
    [vmi] = cluster.store.list(resources.VMI, "e2e")
    assert vmi["status"]["phase"] == "Running"
    # And no temporary pod of the VM is left
    assert [p["metadata"]["name"] for p in cluster.store.list(resources.POD, "e2e")] == []
    # And the converted guest, booted from the claim virt-v2v wrote, reaches its login prompt
    name = vm["metadata"]["name"]
    console = await _console_until(cluster, name, guest["login_marker"], limit=900)
    assert guest["login_marker"] in console, console[-2000:]
    print(f"flow 3 on kubernetes (stand-in): {seconds:.0f}s; VM {name} booted")


async def _console_until(cluster: Cluster, name: str, marker: str, limit: float) -> str:
    """The guest's console once it shows ``marker``, or as it is when the instance ends
    or ``limit`` seconds pass (a bound on the wait, not a measure of the boot)."""
    path = cluster.launcher.console("e2e", name)
    text = ""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        text = path.read_text(errors="replace") if path.exists() else ""
        vmi = cluster.get(resources.VMI, "e2e", name) or {}
        if marker in text or (vmi.get("status") or {}).get("phase") != "Running":
            break
        await asyncio.sleep(1)
    return text
