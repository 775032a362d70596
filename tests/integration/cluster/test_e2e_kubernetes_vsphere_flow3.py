"""Flow 3 from vSphere through the four services, as processes, on the kubernetes platform.

The services run with ``FERRY_PLATFORM__KIND=kubernetes`` against the cluster stand-in
(served by this test's event loop); the source is the vSphere API simulator, its VM's
disk the test guest's flat extent. The journey: the source powered off, blank
DataVolumes, pvcinit binding them on WaitForFirstConsumer storage, a conversion pod
running the real virt-v2v over captive ``nbdkit curl`` servers that the pod runs around
it on sockets in its own work directory (the datastore URL and the session cookie in
the pod's Secret, never in the pod or a log), under a bandwidth budget whose grants
the pod's pacer takes from the conversion-service, virt-inspector in its own pod
finding the converted Debian with virtio drivers, the VirtualMachine on the converted
claim, its instance Running.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim

from ferry.testing.cluster import resources
from ferry.testing.cluster.cluster import Cluster
from ferry.testing.migration import FLOW3, finished, guest_ova, of_type
from ferry.testing.stack import LocalStack
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Vcsim
from ferry.testing.vcsim.stack import prepare, step_times, vsphere_objects

sys.path.insert(0, str(Path(__file__).parent))
import standin_images
from standin_images import posted

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[3]
NS = "e2e"
NAME = "DC0_H0_VM0"
COOKIE = "vmware_soap_session"
# Every VM's reads together under 256 MiB/s: more than this conversion reads at here,
# so it costs no time, but its grants are taken all the same
BUDGET = """\
apiVersion: ferry.dev/v1alpha1
kind: Budget
metadata: {name: wan}
spec: {scope: global, bandwidthMiBps: 256}
---
"""


def _moved(metrics: str) -> float:
    """What the conversion-service moved under the budget, from its /metrics."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("ferry_budget_bytes_moved_total{") and 'budget="wan"' in line
    )


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:  # the loopback
        return str(response.read().decode())


def _migrate(stack: LocalStack) -> list[dict[str, Any]]:
    recorder = stack.record_events()
    time.sleep(1)
    assert stack.ferry("migrate", "cold", "--name", "m1").returncode == 0
    done = stack.wait_for("m1", lambda ev: finished(ev, "m1"), recorder, timeout=2000)
    time.sleep(1)  # the recorder's last lines
    events = recorder.events()
    failed = [e for e in events if "reason" in e.get("data", e)][-3:]
    assert (done["succeeded"], done["failed"], done["canceled"]) == (1, 0, 0), failed
    return events


async def test_a_vsphere_vm_is_converted_in_a_pod_through_four_services_on_kubernetes(
    e2e_cluster: Cluster, tmp_path: Path
) -> None:
    cluster = e2e_cluster
    guest = await asyncio.to_thread(guest_ova, REPO)
    env = standin_images.services_env(cluster)  # virt-inspector on: the product's default
    with Vcsim() as sim:
        assert sim.endpoint is not None
        endpoint = sim.endpoint
        # Given a running VM whose disk is the test guest's
        with arrange.admin(endpoint) as si:
            arrange.place_disk(si, NAME, Path(guest["raw"]))
            vm_ref = arrange.find_vm(si, NAME)
            arrange.run(vm_ref.ReconfigVM_Task(vim.vm.ConfigSpec(memoryMB=1024)))
            vm = str(vm_ref._moId)
        stack = LocalStack(tmp_path / "stack", env=env, own_env=standin_images.own_pacing_url)
        await asyncio.to_thread(stack.start)
        try:
            # And a cold plan (virt-v2v, the default cold transfer) that runs the target
            # under a bandwidth budget
            text = vsphere_objects(endpoint, [NAME], plan="cold", warm=False, power="on")
            await asyncio.to_thread(prepare, stack, endpoint, BUDGET + text)
            started = time.monotonic()
            # When it is migrated
            events = await asyncio.to_thread(_migrate, stack)
            seconds = time.monotonic() - started
            logs = stack.log_text()
            metrics = await asyncio.to_thread(
                _get, stack.service("conversion-service").process.url + "/metrics"
            )
        finally:
            await asyncio.to_thread(stack.close)
        with arrange.admin(endpoint) as si:
            source = arrange.find_vm(si, NAME)
            power, snapshots_left = str(source.runtime.powerState), arrange.snapshot_names(source)

    # Then it went through flow 3's steps, in order, the source powered off by it
    steps = [d["step"] for d in of_type(events, "migration.step_started", vm)]
    assert [s for s in FLOW3 if s in steps] == [s for s in steps if s in FLOW3]
    assert power == "poweredOff" and snapshots_left == []
    # And the cluster saw blank DataVolumes bound by pvcinit, then a conversion pod
    [dv] = posted(cluster, "datavolumes")
    assert "blank" in dv["spec"]["source"]
    assert posted(cluster, "pods", "pvcinit")
    [pod] = posted(cluster, "pods", "full-conversion")
    # whose program is nbdkit serving the disk on a socket in the pod's own work
    # directory around virt-v2v, through the rate filter, under the pod's pacer
    container = pod["spec"]["containers"][0]
    command = [*container.get("command", []), *container.get("args", [])]
    program = command[command.index("ferry-workload") + 1 :]
    assert program[:3] == ["python3", "-m", "ferry.platform.kubernetes.podpace"], program
    program = program[program.index("--") + 1 :]
    assert program[0] == "nbdkit" and "--run" in program, program
    assert program[3] == "--filter=rate", program  # nbdkit --run CMD --filter=rate …
    assert f"rate-file={container['workingDir']}/rate" in program
    assert f"--unix={container['workingDir']}/nbd-0.sock" in program
    # whose pacer took grants from the budget through the conversion-service while it
    # ran (a reservation: what the budget granted, read or not; none if the pod could
    # not reach the broker)
    assert _moved(metrics) >= 32 << 20, _moved(metrics)
    # and the session cookie only in a Secret: not in the pod, a log or an event
    assert COOKIE not in json.dumps(pod) and COOKIE not in logs
    assert COOKIE not in json.dumps(events)
    assert any(
        COOKIE.encode() in base64.b64decode(value)
        for secret in posted(cluster, "secrets")
        for value in (secret.get("data") or {}).values()
    )
    # And virt-inspector, in a pod of its own, found the converted Debian with virtio
    assert posted(cluster, "pods", "virt-inspector")
    [converted] = of_type(events, "conversion.guest_converted", vm)
    inspection = converted["inspection"]
    assert (inspection["os_type"], inspection["os_distro"]) == ("linux", "debian")
    assert inspection["virtio_drivers"] is True
    # And the VirtualMachine is on the claim virt-v2v wrote, its instance Running
    [made] = cluster.store.list(resources.VIRTUAL_MACHINE, NS)
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in made["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == [dv["metadata"]["name"]]
    with standin_images.claim_image(cluster, NS, claims[0]).open("rb") as disk:
        assert disk.read(512)[510:] == b"\x55\xaa"  # a boot sector where zeros were
    [vmi] = cluster.store.list(resources.VMI, NS)
    assert vmi["status"]["phase"] == "Running"
    # And no pod or Secret of the migration is left
    assert cluster.store.list(resources.POD, NS) == []
    assert cluster.store.list(resources.SECRET, NS) == []
    print(
        f"\nvSphere flow 3 on kubernetes (stand-in): {seconds:.0f} s; conversion "
        f"{converted.get('seconds')} s; steps {step_times(events, vm)}"
    )
