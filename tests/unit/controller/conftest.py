"""Objects and states for the controller's unit tests (no I/O)."""

from __future__ import annotations

import textwrap

import pytest

from ferry.migration_controller import planning
from ferry.proto import objects
from ferry.proto.inventory import Disk, Nic, PowerState, ProviderType, Vm
from ferry.proto.state import VmState

YAML = textwrap.dedent(
    """
    apiVersion: ferry.dev/v1alpha1
    kind: Provider
    metadata: {name: vmware}
    spec: {type: vsphere, url: "https://vcenter.example/sdk", secret: {name: vcenter-creds}}
    ---
    apiVersion: ferry.dev/v1alpha1
    kind: Provider
    metadata: {name: host}
    spec: {type: kubevirt}
    ---
    apiVersion: ferry.dev/v1alpha1
    kind: NetworkMap
    metadata: {name: net}
    spec:
      provider: {source: {name: vmware}, destination: {name: host}}
      map:
        - source: {name: "VM Network"}
          destination: {type: pod}
    ---
    apiVersion: ferry.dev/v1alpha1
    kind: StorageMap
    metadata: {name: disks}
    spec:
      provider: {source: {name: vmware}, destination: {name: host}}
      map:
        - source: {name: datastore1}
          destination: {storageClass: standard}
    ---
    apiVersion: ferry.dev/v1alpha1
    kind: Plan
    metadata: {name: wave1}
    spec:
      provider: {source: {name: vmware}, destination: {name: host}}
      map: {network: {name: net}, storage: {name: disks}}
      targetNamespace: migrated
      vms:
        - name: web01
        - id: vm-2
          targetName: db
    ---
    apiVersion: ferry.dev/v1alpha1
    kind: Migration
    metadata: {name: wave1-1}
    spec: {plan: {name: wave1}}
    """
)


def inventory_vm(
    vm_id: str, name: str, power: PowerState = PowerState.ON, host: str = "esx1"
) -> Vm:
    return Vm(
        id=vm_id,
        name=name,
        provider_type=ProviderType.VSPHERE,
        power_state=power,
        host=host,
        disks=[
            Disk(id=f"{vm_id}-d1", name="disk1", capacity=1 << 30, storage="datastore1"),
            Disk(id=f"{vm_id}-d2", name="disk2", capacity=2 << 30, storage="datastore1"),
        ],
        nics=[Nic(id=f"{vm_id}-n1", name="eth0", network="VM Network")],
    )


@pytest.fixture
def docs() -> dict[str, objects.FerryObjectBase]:
    return {
        o.KIND if o.KIND != "Provider" else o.name: o
        for o in objects.load_documents(YAML, "plan.yaml")
    }


@pytest.fixture
def state(docs: dict[str, objects.FerryObjectBase]) -> VmState:
    return make_state(docs, inventory_vm("vm-1", "web01"))


@pytest.fixture
def warm(docs: dict[str, objects.FerryObjectBase]) -> VmState:
    return make_state(docs, inventory_vm("vm-1", "web01"), warm=True)


def make_state(docs: dict[str, objects.FerryObjectBase], vm: Vm, **plan_changes: object) -> VmState:
    plan = docs["Plan"]
    assert isinstance(plan, objects.Plan)
    if plan_changes:
        plan = plan.model_copy(update={"spec": plan.spec.model_copy(update=plan_changes)})
    return planning.vm_state(
        plan=plan,
        migration=docs["Migration"],  # type: ignore[arg-type]
        source=docs["vmware"],  # type: ignore[arg-type]
        destination=docs["host"],  # type: ignore[arg-type]
        networks=docs["NetworkMap"],  # type: ignore[arg-type]
        storage=docs["StorageMap"],  # type: ignore[arg-type]
        wanted=plan.spec.vms[0],
        vm=vm,
        target_name="web01",
        seq=0,
        now=1000.0,
    )
