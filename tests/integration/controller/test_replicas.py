"""Controller replicas: one drives the VMs, the others stand by. kill -9 of the active
one mid-wave: a standby takes over within the lease plus the ack wait, and every VM
completes exactly once."""

from __future__ import annotations

from collections import Counter

import pytest
from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack
from test_restart import ChildController

from ferry.migration_controller.leadership import KEY, Lease
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket


async def _active_pid(stack: Stack) -> int:
    entry = await stack.bus.kv(Bucket.LOCKS, Lease).get(KEY)
    assert entry is not None
    return int(entry.value.owner.rsplit(":", 1)[1])


@pytest.mark.slow  # 20-60 s of kill-and-restart: kept out of make test-fast, run by make test
@pytest.mark.timeout(300)
async def test_kill_the_active_replica_mid_wave(stack: Stack) -> None:
    # Given twelve VMs (four at a time) and two controller replicas as child processes
    ids = [f"id-{i:02d}" for i in range(12)]
    stack.source("src", [make_vm(v, ProviderType.OVA, host=f"h{n % 3}") for n, v in enumerate(ids)])
    await apply(stack.bus, documents("ova", ids, max_in_flight=4))
    for i in ids:
        stack.services.script[(i, "ConvertGuest")] = "hold"
    stack.run_services()
    replicas = [ChildController(stack), ChildController(stack)]
    for replica in replicas:
        await replica.start()
    try:
        await stack.migrate("m1")
        # When four VMs are mid-conversion and the active replica is killed -9
        await eventually(lambda: len(stack.services.holding) == 4, what="four VMs converting")
        active = await _active_pid(stack)
        (victim,) = [r for r in replicas if r.proc is not None and r.proc.pid == active]
        victim.kill()
        stack.services.released.update((i, "ConvertGuest") for i in ids)

        # Then the standby takes the lease and every VM completes
        async def other_is_active() -> bool:
            return await _active_pid(stack) != active

        await eventually(other_is_active, timeout=30, what="the standby took over")
        mig = await stack.wait_end("m1", timeout=120)
    finally:
        for replica in replicas:
            replica.stop()
    assert mig["status"]["phase"] == "Succeeded"
    assert all(v["status"] == "Succeeded" for v in (await stack.vms("m1")).values())
    # And each VM completed once, and no service step ran twice
    events = await stack.events("m1")
    completed = Counter(m.vm for t, m in events if t == "migration.vm_completed.v1")
    assert completed == Counter({i: 1 for i in ids})
    ran = Counter((vm, step) for vm, step, _ in stack.services.ran)
    assert set(ran.values()) == {1}, {k: n for k, n in ran.items() if n > 1}
