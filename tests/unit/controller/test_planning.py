"""Preflight and the initial per-VM state, without I/O."""

from __future__ import annotations

import msgspec

from ferry.migration_controller import planning
from ferry.proto import objects
from ferry.proto.inventory import Concern, ConcernCode, Disk, PowerState, ProviderType, Vm

from .conftest import inventory_vm


def _plan(
    docs: dict[str, objects.FerryObjectBase], vms: list[dict[str, str]], **kw: object
) -> objects.Plan:
    plan = docs["Plan"]
    assert isinstance(plan, objects.Plan)
    spec = plan.spec.model_copy(update={"vms": [objects.PlanVm(**v) for v in vms], **kw})
    return plan.model_copy(update={"spec": spec})


def _check(
    docs: dict[str, objects.FerryObjectBase], plan: objects.Plan, inventory: list[Vm]
) -> planning.Preflight:
    return planning.preflight(
        plan,
        docs["vmware"],
        inventory,
        docs["NetworkMap"],
        docs["StorageMap"],  # type: ignore[arg-type]
    )


def test_generated_target_names_are_dns1123_and_unique(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given three source VMs whose names map to the same DNS-1123 label
    inventory = [
        inventory_vm("1", "Web_01"),
        inventory_vm("2", "web-01"),
        inventory_vm("3", "WEB.01"),
    ]
    plan = _plan(docs, [{"id": "1"}, {"id": "2"}, {"id": "3"}])
    # When the plan is checked
    result = _check(docs, plan, inventory)
    # Then it passes and each VM got its own valid name
    assert result.ok
    assert result.target_names == {"1": "web-01", "2": "web-01-2", "3": "web-01-3"}


def test_explicit_duplicate_target_names_are_refused(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given two VMs given the same explicit target name
    inventory = [inventory_vm("1", "a"), inventory_vm("2", "b")]
    plan = _plan(docs, [{"id": "1", "targetName": "db"}, {"id": "2", "targetName": "db"}])
    # When the plan is checked
    result = _check(docs, plan, inventory)
    # Then both are refused with the reason
    assert result.reasons == {
        "1": ["targetName 'db' is used by more than one VM"],
        "2": ["targetName 'db' is used by more than one VM"],
    }


def test_unmapped_storage_unsupported_features_and_warm_source(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a VM on an unmapped datastore with an unsupported feature, in a warm OVA plan
    odd = msgspec.structs.replace(
        inventory_vm("1", "a"),
        disks=[Disk(id="d", name="disk9", capacity=1, storage="nfs-9")],
        warnings=["unsupported: shared disk", "a harmless note"],
    )
    plan = _plan(docs, [{"id": "1"}], warm=True)
    ova = docs["vmware"].model_copy(
        update={"spec": docs["vmware"].spec.model_copy(update={"type": ProviderType.OVA})}
    )  # type: ignore[attr-defined]
    # When the plan is checked
    result = planning.preflight(plan, ova, [odd], docs["NetworkMap"], docs["StorageMap"])  # type: ignore[arg-type]
    # Then each problem is a reason: storage, the unsupported feature, and warm for OVA
    assert result.reasons == {
        "plan": ["warm migration is not supported for ova sources"],
        "1": [
            "storage 'nfs-9' of disk 'disk9' is not in StorageMap 'disks'",
            "unsupported: shared disk",
        ],
    }


def test_vm_state_resolves_maps_and_power(docs: dict[str, objects.FerryObjectBase]) -> None:
    # Given a running VM and a plan that powers targets on as the source was
    vm = inventory_vm("1", "web01", power=PowerState.ON)
    plan = _plan(docs, [{"id": "1"}])
    # When its initial state is built
    state = planning.vm_state(
        plan=plan, migration=docs["Migration"], source=docs["vmware"], destination=docs["host"],  # type: ignore[arg-type]
        networks=docs["NetworkMap"], storage=docs["StorageMap"], wanted=plan.spec.vms[0],  # type: ignore[arg-type]
        vm=vm, target_name="web01", seq=0, now=0.0,
    )  # fmt: skip
    # Then its disks go to the mapped storage class, its NIC to the pod network, and it will run
    assert [t.storage_class for t in state.volume_targets] == ["standard", "standard"]
    assert [n.type for n in state.network_targets] == ["pod"]
    assert state.run_target and state.status.value == "Queued"
    assert [d.total for d in state.disks] == [1 << 30, 2 << 30]


def test_a_disk_without_a_storage_is_not_taken_by_a_map_entry_named_by_name(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a VM whose source reported no storage for its disk, and a map that
    # names its one storage by name only (so the entry's id is empty)
    blank = msgspec.structs.replace(
        inventory_vm("1", "a"), disks=[Disk(id="d", name="disk0", capacity=1, storage="")]
    )
    storage = docs["StorageMap"]
    assert isinstance(storage, objects.StorageMap)
    assert all(not pair.source.id for pair in storage.spec.map)
    plan = _plan(docs, [{"id": "1"}])
    # When the plan is checked
    result = planning.preflight(plan, docs["vmware"], [blank], docs["NetworkMap"], storage)  # type: ignore[arg-type]
    # Then the disk is unmapped, with the reason, instead of matching the empty id
    assert result.reasons == {"1": ["storage '' of disk 'disk0' is not in StorageMap 'disks'"]}


def test_provider_concerns_are_reasons_and_warm_only_ones_only_for_warm_plans(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a VM whose provider found a snapshot (always) and CBT off (warm only)
    concerned = msgspec.structs.replace(
        inventory_vm("1", "a"),
        concerns=[
            Concern(code=ConcernCode.SNAPSHOTS, message="the VM has snapshots (s1)"),
            Concern(code=ConcernCode.CBT_DISABLED, message="CBT is off", warm_only=True),
        ],
    )
    # When a cold and a warm plan are checked
    cold = _check(docs, _plan(docs, [{"id": "1"}]), [concerned])
    warm = _check(docs, _plan(docs, [{"id": "1"}], warm=True), [concerned])
    # Then the snapshot is a reason for both, CBT only for the warm plan
    assert cold.reasons["1"] == ["the VM has snapshots (s1)"]
    assert warm.reasons["1"][:2] == ["the VM has snapshots (s1)", "CBT is off"]


def test_a_deployment_option_for_a_vm_without_options_is_refused(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a VM that offers no deployment options, and a plan choosing one
    plan = _plan(docs, [{"id": "1", "deploymentOption": "large"}])
    # When the plan is checked
    result = _check(docs, plan, [inventory_vm("1", "a")])
    # Then it is refused, saying the VM has none
    assert result.reasons == {
        "1": ["deploymentOption 'large': VM 'a' offers no deployment options"]
    }


def test_an_offered_option_never_read_from_the_source_is_refused(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a VM offering two options, a plan choosing the other, and no reading of it
    vm = msgspec.structs.replace(
        inventory_vm("1", "a"), configuration="small", configurations=["small", "large"]
    )
    plan = _plan(docs, [{"id": "1", "deploymentOption": "large"}])
    assert planning.options_to_read(plan, [vm]) == [(vm, "large")]
    # When the plan is checked without it / Then the default is never migrated instead
    result = _check(docs, plan, [vm])
    assert result.reasons == {
        "1": ["deploymentOption 'large' of VM 'a' could not be read from the source"]
    }


def test_skip_guest_conversion_gives_the_vm_a_raw_copy_itinerary(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a VMware VM in a Plan with skipGuestConversion (raw copy)
    vm = inventory_vm("1", "web01", power=PowerState.ON)
    plan = _plan(docs, [{"id": "1"}], skipGuestConversion=True)
    # When its initial state is built
    state = planning.vm_state(
        plan=plan, migration=docs["Migration"], source=docs["vmware"], destination=docs["host"],  # type: ignore[arg-type]
        networks=docs["NetworkMap"], storage=docs["StorageMap"], wanted=plan.spec.vms[0],  # type: ignore[arg-type]
        vm=vm, target_name="web01", seq=0, now=0.0,
    )  # fmt: skip
    steps = [s.name for s in state.steps]
    # Then its disks are copied by the importer and virt-v2v never runs
    assert state.flow.value == "importer"
    assert "CopyDisks" in steps and "ConvertGuest" not in steps


def test_a_raw_copy_takes_its_volumes_for_create_vm_from_the_copy(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    from ferry.migration_controller import steps
    from ferry.proto.inventory import Checksum, DiskCopy, Volume
    from ferry.proto.volume import DisksCopied

    from .conftest import make_state

    # Given a raw-copy VM whose volumes were created without a path yet
    state = make_state(docs, inventory_vm("1", "web01"), skipGuestConversion=True)
    disks = state.inventory.disks
    state.volumes = [Volume(disk_id=d.id, name=f"v-{d.name}", size=1) for d in disks]
    digest = Checksum(algorithm="sha256", digest="ab", bytes=1)
    # When the importer reports the disks copied, with the volumes as bound
    copied = [
        Volume(disk_id=d.id, name=f"v-{d.name}", size=1, path=f"/data/{d.name}.img")
        for d in state.inventory.disks
    ]
    evt = DisksCopied(
        plan="p", migration="m", vm="1", step="CopyDisks",
        disks=[DiskCopy(disk_id=d.id, volume=f"v-{d.name}", bytes_copied=1, source=digest,
                        target=digest) for d in state.inventory.disks],
        volumes=copied,
    )  # fmt: skip
    steps.absorb_copies(state, evt)
    # Then the state's volumes have their paths: CreateVM (no conversion since) needs them
    assert [v.path for v in state.volumes] == ["/data/disk1.img", "/data/disk2.img"]


def test_the_sources_own_reasons_reject_the_vm_they_name(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given two VMs, and a source validator that has something against VM 2 only
    plan = _plan(docs, [{"id": "1"}, {"id": "2"}])
    vms = [inventory_vm("1", "a"), inventory_vm("2", "b")]
    told = {"1": [], "2": ["the libvirt daemon does not offer pull-mode backups"]}
    # When the plan is checked
    result = planning.preflight(
        plan, docs["vmware"], vms, docs["NetworkMap"], docs["StorageMap"],  # type: ignore[arg-type]
        source_reasons=told,
    )  # fmt: skip
    # Then the plan does not start, and the reason is on VM 2
    assert not result.ok
    assert result.reasons == {"2": ["the libvirt daemon does not offer pull-mode backups"]}


def test_a_libvirt_guest_is_converted_in_place_unless_it_runs_on_virtio(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a libvirt source, and two guests: one on SATA (drivers not known), one on virtio
    source = docs["vmware"].model_copy(deep=True)
    assert isinstance(source, objects.Provider)
    source.spec.type = ProviderType.LIBVIRT
    sata = msgspec.structs.replace(inventory_vm("1", "a"), provider_type=ProviderType.LIBVIRT)
    virtio = msgspec.structs.replace(sata, id="2", name="b", virtio_drivers=True)
    plan = _plan(docs, [{"id": "1"}, {"id": "2"}])

    def state(vm: Vm) -> list[str]:
        built = planning.vm_state(
            plan=plan, migration=docs["Migration"], source=source, destination=docs["host"],  # type: ignore[arg-type]
            networks=docs["NetworkMap"], storage=docs["StorageMap"], wanted=plan.spec.vms[0],  # type: ignore[arg-type]
            vm=vm, target_name=vm.name, seq=0, now=0.0,
        )  # fmt: skip
        assert built.flow.value == "populator"
        return [s.name for s in built.steps] + built.notes

    # When their itineraries are built
    converted, plain = state(sata), state(virtio)
    # Then the SATA guest gets an in-place conversion, and its state says why
    assert "ConvertGuest" in converted
    assert any("ConvertGuest (in place) added" in n for n in converted)
    # And the virtio guest goes without one, and its state says why not
    assert "ConvertGuest" not in plain
    assert any("already runs on virtio" in n for n in plain)


def test_a_vm_another_migration_is_moving_is_refused(
    docs: dict[str, objects.FerryObjectBase],
) -> None:
    # Given a plan of two VMs, one of them still being migrated by an earlier migration
    inventory = [inventory_vm("1", "a"), inventory_vm("2", "b")]
    plan = _plan(docs, [{"id": "1"}, {"id": "2"}])
    # When a second migration of the plan is checked
    result = planning.preflight(
        plan, docs["vmware"], inventory, docs["NetworkMap"], docs["StorageMap"],  # type: ignore[arg-type]
        busy={"1": "plan-20260101-000000"},
    )  # fmt: skip
    # Then that VM is refused, naming the migration that has it; the other may go
    assert result.reasons == {
        "1": [
            "VM '1' is being migrated by migration plan-20260101-000000 "
            "(wait for it to end, or ferry cancel it)"
        ]
    }
