"""Two plans whose VMs share one host's bandwidth budget, copied by two volume-service
replicas at once (real importer workloads, real files, one nats-server): together they
never move more than the budget allows (no chunk moves ahead of its grant: the copy
engine's own test), and both move at once.

How close to the budget the copies come is measured in bench/budgets, not here.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from volume_harness import MiB, ServiceFactory, copy, create, make_ova, wait_for

from ferry.bus import Bus, TopologySettings
from ferry.bus.rate import account
from ferry.proto import subjects, volume
from ferry.proto.objects import API_VERSION
from ferry.proto.subjects import Bucket
from ferry.proto.volume import Bandwidth, VolumeSource
from ferry.runtime.bandwidth import Rates
from ferry.testing.bus import Running
from ferry.volume_service import app

BUDGET = 2 * MiB  # bytes per second, for both plans together: 16 MiB take ≥ 6 s
PERIOD = 1.0  # the shared rate's window (ferry.runtime.bandwidth.Rates' default)
# The largest slice a copy asks for at once: one 4 MiB chunk of a half-full disk (data
# in every other MiB); a window's grants may run one slice ahead of the clock.
SLICE = 2 * MiB


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# About 10 s: paced, 16 MiB take at least 6 s, unpaced even a loaded machine needs ~3 s.
@pytest.mark.slow
async def test_two_plans_on_one_host_never_exceed_its_bandwidth_budget(
    bus: Bus, nats_url: str, volume_service: ServiceFactory, tmp_path: Path
) -> None:
    # Given two VMs of two plans on host esx1 (8 MiB of data each) and a budget of 2 MiB/s
    # for the host, as the controller's scheduler hands it to each VM's CopyDisks
    vms = {
        plan: await make_ova(tmp_path / plan, name=f"vm-{plan}", size=16 * MiB, seed=seed)
        for plan, seed in (("plan-a", 3), ("plan-b", 5))
    }
    host = account("esx1-net", "esx1")
    shared = [Bandwidth(budget="esx1-net", account=host, bytes_per_second=BUDGET)]
    topology = TopologySettings(ack_wait_seconds=3.0, max_deliver=3)
    async with (
        volume_service() as settings,
        await Bus.connect(nats_url, name="replica-2", settings=topology) as other,
        Running(app.build_router(other, settings), other, concurrency=2, grace_seconds=5),
    ):
        for plan, ova in vms.items():
            made = create(ova, VolumeSource.IMPORTER, migration=f"mig-{plan}", vm=ova.vm.id)
            await bus.publish(msgspec.structs.replace(made, plan=plan))
        await wait_for(bus, volume.VolumesCreated, count=2)

        # When both plans' copies run at once, on whichever replica takes each
        started = time.time()
        for plan, ova in vms.items():
            cmd = copy(ova, migration=f"mig-{plan}", vm=ova.vm.id)
            await bus.publish(msgspec.structs.replace(cmd, plan=plan, bandwidth=shared))
        copied = await wait_for(bus, volume.DisksCopied, count=2, within=60)
        ended = time.time()
        records = [r async for r in bus.records(follow=False)]

    # Then both copies are whole and verified
    assert {c.plan for c in copied} == set(vms)
    for c in copied:
        assert isinstance(c, volume.DisksCopied)
        (disk,) = c.disks
        assert disk.source == disk.target and disk.bytes_copied == 8 * MiB
    total = 16 * MiB
    # And over the whole run the two moved no more than the budget (plus the one window
    # a budget may open with and the slice granted at the start of the last one), where
    # unpaced they would take a fraction of a second
    assert total <= BUDGET * (ended - started) + BUDGET * PERIOD + SLICE, ended - started
    # And the two plans moved at the same time, under the one budget: each one's copy
    # was under way before the other's ended (how evenly they share it: bench/budgets)
    began: dict[str, float] = {}
    ended_at: dict[str, float] = {}
    for record in records:
        message, at = record.message, _when(record.envelope.time)
        if isinstance(message, volume.DiskProgress):
            began.setdefault(message.plan, at)
        if isinstance(message, volume.DisksCopied):
            ended_at[message.plan] = at
    assert max(began.values()) < min(ended_at.values()), (began, ended_at)


async def test_a_budget_changed_while_copies_run_applies_to_them(bus: Bus) -> None:
    # Given a copy paced under budget esx1-net, whose command said 2 MiB/s
    objects = bus.kv(Bucket.OBJECTS, dict)
    key = subjects.object_key("Budget", "esx1-net")

    async def set_budget(mibps: float) -> None:
        spec = {"scope": "host", "bandwidthMiBps": mibps}
        meta = {"name": "esx1-net"}
        await objects.put(
            key, {"apiVersion": API_VERSION, "kind": "Budget", "metadata": meta, "spec": spec}
        )

    await set_budget(2)
    now = [1000.0]
    rates = Rates(bus, refresh=5.0, clock=lambda: now[0])
    host = account("esx1-net", "esx1")
    pace = rates.pace([Bandwidth(budget="esx1-net", account=host, bytes_per_second=BUDGET)])
    assert pace is not None
    await pace(1024)
    # When the Budget is raised to 64 MiB/s while it runs, and the refresh time passes
    await set_budget(64)
    await pace(1024)
    now[0] += 5.0
    await pace(1024)
    # Then the shared rate the copy takes from is the new one
    assert rates.rate_of(host) == 64 * MiB
    # And what it moved is counted for the budget's account
    registry = CollectorRegistry()
    registry.register(rates.moved)
    labels = {"budget": "esx1-net", "account": host}
    assert registry.get_sample_value("ferry_budget_bytes_moved_total", labels) == 3 * 1024
