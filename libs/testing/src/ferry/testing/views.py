"""A small world in the KV views, as the controller would have left it: a Provider, a
Plan, a running Migration and its VMs' states. For tests of readers (the console)
that need what a migration looks like without running one."""

from __future__ import annotations

import time
from typing import Any

from ferry.bus import Bus
from ferry.proto import migration, objects, subjects
from ferry.proto.inventory import Disk, ProviderType, Vm
from ferry.proto.phases import Flow, StepStatus, VmStatus
from ferry.proto.state import DiskState, StepState, VmState, now_iso
from ferry.proto.subjects import Bucket
from ferry.proto.volume import SourceRef

PLAN = "wave1"
MIGRATION = "wave1-run"
GIB = 1 << 30


def _doc(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> Any:
    doc = {
        "apiVersion": objects.API_VERSION,
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
        **({"status": status} if status else {}),
    }
    return objects.to_document(objects.parse_object(doc, "test world"))


def vm_state(vm: str, seq: int = 0, *, warm: bool = False) -> VmState:
    disks = [Disk(id=f"{vm}-d0", name="disk0", capacity=4 * GIB, storage="ds1")]
    t = time.time() - 95  # a VM that started a minute and a half ago
    return VmState(
        plan=PLAN,
        migration=MIGRATION,
        vm=vm,
        name=vm,
        target_name=vm,
        namespace="demo",
        seq=seq,
        host="esx1",
        flow=Flow.CONVERSION,
        warm=warm,
        status=VmStatus.RUNNING,
        phase="ConvertGuest",
        steps=[
            StepState(
                name="StorePowerState",
                service="controller",
                status=StepStatus.COMPLETED,
                attempt=1,
                started=now_iso(t),
                ended=now_iso(t + 1),
            ),
            StepState(
                name="ConvertGuest",
                service="conversion",
                status=StepStatus.RUNNING,
                attempt=2,
                started=now_iso(t + 2),
            ),
            StepState(name="CreateVM", service="vm"),
        ],
        disks=[DiskState(id=d.id, name=d.name, total=d.capacity) for d in disks],
        started=now_iso(t),
        provider=SourceRef(provider="src", type=ProviderType.OVA),
        inventory=Vm(id=vm, name=vm, provider_type=ProviderType.OVA, host="esx1", disks=disks),
    )


async def seed(bus: Bus, vms: tuple[str, ...] = ("web01", "db01")) -> list[VmState]:
    """The objects and per-VM states of one running migration of plan ``wave1``."""
    store = bus.kv(Bucket.OBJECTS, dict)
    await store.put(
        subjects.object_key("Provider", "src"), _doc("Provider", "src", {"type": "ova"})
    )
    await store.put(
        subjects.object_key("Provider", "local"), _doc("Provider", "local", {"type": "kubevirt"})
    )
    await store.put(
        subjects.object_key("Plan", PLAN),
        _doc(
            "Plan",
            PLAN,
            {
                "provider": {"source": {"name": "src"}, "destination": {"name": "local"}},
                "map": {"network": {"name": "nets"}, "storage": {"name": "stores"}},
                "targetNamespace": "demo",
                "vms": [{"name": v} for v in vms],
            },
        ),
    )
    await store.put(
        subjects.object_key("Migration", MIGRATION),
        _doc(
            "Migration",
            MIGRATION,
            {"plan": {"name": PLAN}},
            {"phase": "Running", "started": now_iso(time.time() - 95)},
        ),
    )
    states = [vm_state(v, i) for i, v in enumerate(vms)]
    kv = bus.kv(Bucket.VMS, VmState)
    for state in states:
        await kv.put(subjects.vm_key(MIGRATION, state.vm), state)
    return states


def progress(vm: str, done: int, total: int = 4 * GIB) -> migration.Progress:
    return migration.Progress(
        plan=PLAN,
        migration=MIGRATION,
        vm=vm,
        step="ConvertGuest",
        done=done,
        total=total,
        disks={f"{vm}-d0": done},
    )
