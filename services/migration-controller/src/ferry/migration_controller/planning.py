"""From a Plan to one state per VM: preflight validation, then each VM's itinerary.

Preflight looks at everything before anything runs and collects a reason per VM
(missing VM, unmapped network or storage, bad or duplicate target name,
unsupported feature). A plan with any reason never starts. Pure: the caller
fetches the objects and the inventory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from ferry.migration_controller import itinerary
from ferry.proto import names, objects
from ferry.proto.inventory import (
    WARM_SOURCES,
    NetworkTarget,
    PowerState,
    ProviderType,
    Vm,
    VolumeTarget,
)
from ferry.proto.state import DiskState, StepState, VmState, now_iso
from ferry.proto.volume import SourceRef

PLAN_KEY = "plan"  # reasons that concern the plan as a whole

# A VM as one deployment option describes it, or why it cannot be: by (VM id, option).
Configured = Mapping[tuple[str, str], Vm | str]


@dataclass
class Preflight:
    """The outcome: VMs ready to go (with their inventory), or reasons per VM."""

    vms: list[tuple[objects.PlanVm, Vm]] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    target_names: dict[str, str] = field(default_factory=dict)  # vm id -> target name

    @property
    def ok(self) -> bool:
        return not self.reasons

    def reject(self, key: str, reason: str) -> None:
        self.reasons.setdefault(key, []).append(reason)


def find_vm(wanted: objects.PlanVm, inventory: list[Vm]) -> Vm | None:
    if wanted.id:
        return next((v for v in inventory if v.id == wanted.id), None)
    return next((v for v in inventory if v.name == wanted.name), None)


def options_to_read(plan: objects.Plan, inventory: list[Vm]) -> list[tuple[Vm, str]]:
    """(VM, option) for each plan VM that chose an offered, non-default deployment option.

    The caller asks the provider for these (``Configurable.configured``) and hands
    the answers to :func:`preflight`; options not offered are preflight's reasons.
    """
    wanted = []
    for vm_wanted in plan.spec.vms:
        option = vm_wanted.deploymentOption
        found = find_vm(vm_wanted, inventory)
        if found and option and option != found.configuration and option in found.configurations:
            wanted.append((found, option))
    return wanted


def preflight(
    plan: objects.Plan,
    source: objects.Provider,
    inventory: list[Vm] | None,
    networks: objects.NetworkMap,
    storage: objects.StorageMap,
    unreachable: str = "",
    skip: frozenset[str] = frozenset(),
    configured: Configured | None = None,
    source_reasons: Mapping[str, list[str]] | None = None,
    busy: Mapping[str, str] | None = None,
) -> Preflight:
    """Check a plan before anything runs.

    ``inventory`` is None, with ``unreachable`` saying why, when the source is down;
    ``skip`` holds VM ids that already migrated (a re-run leaves them out);
    ``configured`` holds the VMs of :func:`options_to_read`, as the provider read them.
    ``source_reasons`` is what the source's own validator said, by VM id.
    ``busy`` holds VM ids another migration is moving now (id -> that migration).
    """
    out = Preflight()
    if inventory is None:
        out.reject(PLAN_KEY, f"provider {source.name!r} is not reachable: {unreachable}")
        return out
    # Checked here too, not only when the Plan is applied: a stored document can be
    # written by anything that reaches the objects bucket.
    if not names.is_dns1123_label(plan.spec.targetNamespace):
        out.reject(
            PLAN_KEY,
            f"targetNamespace {plan.spec.targetNamespace!r} is not a DNS-1123 label",
        )
    if plan.spec.warm and source.spec.type not in WARM_SOURCES:
        out.reject(
            PLAN_KEY, f"warm migration is not supported for {source.spec.type.value} sources"
        )
    seen: set[str] = set()
    for wanted in plan.spec.vms:
        found = find_vm(wanted, inventory)
        if found is None:
            out.reject(wanted.key, f"VM {wanted.key!r} not found in provider {source.name!r}")
            continue
        if found.id in seen:
            out.reject(wanted.key, f"VM {wanted.key!r} is listed twice")
            continue
        seen.add(found.id)
        if found.id in skip:
            continue
        if found.id in (busy or {}):
            out.reject(
                wanted.key,
                f"VM {wanted.key!r} is being migrated by migration {(busy or {})[found.id]} "
                "(wait for it to end, or ferry cancel it)",
            )
            continue
        if wanted.deploymentOption:
            chosen = _chosen(found, wanted.deploymentOption, configured or {})
            if isinstance(chosen, str):
                out.reject(wanted.key, chosen)
                continue
            found = chosen
        for reason in _vm_reasons(found, networks, storage, warm=plan.spec.warm):
            out.reject(wanted.key, reason)
        for reason in (source_reasons or {}).get(found.id, []):
            out.reject(wanted.key, reason)
        out.vms.append((wanted, found))
    _name_targets(out)
    return out


def _chosen(vm: Vm, option: str, configured: Configured) -> Vm | str:
    """``vm`` in deployment option ``option``, or why it cannot be migrated so."""
    if option == vm.configuration:
        return vm
    if not vm.configurations:
        return f"deploymentOption {option!r}: VM {vm.name!r} offers no deployment options"
    if option not in vm.configurations:
        offered = ", ".join(repr(c) for c in vm.configurations)
        return f"deploymentOption {option!r} is not offered by VM {vm.name!r} (offered: {offered})"
    read = configured.get((vm.id, option))
    if read is None:
        return f"deploymentOption {option!r} of VM {vm.name!r} could not be read from the source"
    if isinstance(read, str):
        return f"deploymentOption {option!r} of VM {vm.name!r}: {read}"
    return read


def _vm_reasons(
    vm: Vm, networks: objects.NetworkMap, storage: objects.StorageMap, *, warm: bool = False
) -> list[str]:
    reasons: list[str] = []
    for nic in vm.nics:
        if nic.network and networks.find(nic.network) is None:
            where = f"NetworkMap {networks.name!r}"
            reasons.append(f"network {nic.network!r} of NIC {nic.name!r} is not in {where}")
    for disk in vm.disks:
        if storage.find(disk.storage) is None:
            where = f"StorageMap {storage.name!r}"
            reasons.append(f"storage {disk.storage!r} of disk {disk.name!r} is not in {where}")
    if not vm.disks:
        reasons.append("the VM has no disks")
    reasons.extend(
        f"unsupported: {w.removeprefix('unsupported: ')}"
        for w in vm.warnings
        if w.startswith("unsupported")
    )
    reasons.extend(c.message for c in vm.concerns if warm or not c.warm_only)
    return reasons


def _name_targets(out: Preflight) -> None:
    """Explicit target names must be valid and unique; generated ones get a suffix on a clash."""
    explicit = Counter(w.targetName for w, _ in out.vms if w.targetName)
    taken = set(explicit)
    for wanted, vm in out.vms:
        if wanted.targetName:
            if not names.is_dns1123_label(wanted.targetName):
                out.reject(wanted.key, f"targetName {wanted.targetName!r} is not a DNS-1123 label")
            elif explicit[wanted.targetName] > 1:
                out.reject(
                    wanted.key, f"targetName {wanted.targetName!r} is used by more than one VM"
                )
            out.target_names[vm.id] = wanted.targetName
            continue
        base = names.to_dns1123_label(vm.name)
        name, n = base, 1
        while name in taken:
            n += 1
            suffix = f"-{n}"
            name = base[: 63 - len(suffix)] + suffix
        taken.add(name)
        out.target_names[vm.id] = name


def _storage_targets(vm: Vm, storage: objects.StorageMap) -> list[VolumeTarget]:
    targets = []
    for disk in vm.disks:
        dest = storage.find(disk.storage)
        assert dest is not None  # preflight checked
        targets.append(
            VolumeTarget(
                disk_id=disk.id,
                storage_class=dest.storageClass,
                volume_mode=dest.volumeMode,
                access_modes=[dest.accessMode],
                format=dest.format,
            )
        )
    return targets


def _network_targets(vm: Vm, networks: objects.NetworkMap) -> list[NetworkTarget]:
    out = []
    for nic in vm.nics:
        dest = networks.find(nic.network) if nic.network else None
        if dest is None:
            out.append(NetworkTarget(nic_id=nic.id))
            continue
        name = f"{dest.namespace}/{dest.name}" if dest.namespace else dest.name
        out.append(NetworkTarget(nic_id=nic.id, type=dest.type, name=name))
    return out


def _runs(plan: objects.Plan, vm: Vm) -> bool:
    wanted = plan.spec.targetPowerState
    return wanted == "on" or (wanted == "auto" and vm.power_state is PowerState.ON)


@dataclass(frozen=True)
class Limits:
    max_attempts: int = 3
    retry_base: float = 2.0


def vm_state(
    *,
    plan: objects.Plan,
    migration: objects.Migration,
    source: objects.Provider,
    destination: objects.Provider,
    networks: objects.NetworkMap,
    storage: objects.StorageMap,
    wanted: objects.PlanVm,
    vm: Vm,
    target_name: str,
    seq: int,
    now: float,
    limits: Limits = Limits(),
) -> VmState:
    """The initial state of one VM: its itinerary, all steps Pending, queued."""
    hooks = {h.step.value: h.hook.name for h in wanted.hooks}
    facts = itinerary.Facts(
        source=ProviderType(source.spec.type),
        warm=plan.spec.warm,
        remote=not destination.is_local_target,
        run_target=_runs(plan, vm),
        pre_hook="PreHook" in hooks,
        post_hook="PostHook" in hooks,
        raw_copy=plan.spec.skipGuestConversion,
        virtio_drivers=bool(vm.virtio_drivers),
        importer_copy=vm.importer_copy,
    )
    flow, chosen = itinerary.build(facts)
    cutover = migration.spec.cutover.timestamp() if migration.spec.cutover else 0.0
    return VmState(
        plan=plan.name,
        migration=migration.name,
        vm=vm.id,
        name=vm.name,
        target_name=target_name,
        namespace=plan.spec.targetNamespace,
        seq=seq,
        host=vm.host,
        flow=flow,
        warm=facts.warm,
        remote=facts.remote,
        steps=[
            StepState(name=s.phase.value, service=s.owner.value, instant=s.instant) for s in chosen
        ],
        provider=SourceRef(provider=source.name, type=source.spec.type, url=source.spec.url),
        inventory=vm,
        volume_targets=_storage_targets(vm, storage),
        network_targets=_network_targets(vm, networks),
        hooks=hooks,
        run_target=facts.run_target,
        cutover=cutover,
        precopy_interval=float(plan.spec.precopyIntervalSeconds),
        max_precopies=plan.spec.maxPrecopies,
        max_attempts=limits.max_attempts,
        retry_base=limits.retry_base,
        disks=[DiskState(id=d.id, name=d.name, total=d.capacity) for d in vm.disks],
        created=now_iso(now),
        notes=itinerary.notes(facts, flow),
    )
