"""The three flows, declared as data.

A flow is an ordered tuple of :class:`Step`: the phase it shows, the service that
owns it, the function that runs it, a predicate (``when=``) deciding whether a
given VM needs it, and the events that complete it. A VM's itinerary is its
flow's steps filtered by the predicates over that VM's :class:`Facts`; the list
of phase names is stored in the VM's state, and the engine looks each step up
by (flow, phase). Adding a step is adding a line here — there is no switch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ferry.migration_controller import steps
from ferry.proto import conversion, vm, volume
from ferry.proto.base import Event
from ferry.proto.inventory import ProviderType
from ferry.proto.phases import Flow, Phase
from ferry.proto.state import VmState
from ferry.proto.subjects import Service

NEEDS_CONVERSION = frozenset({ProviderType.VSPHERE, ProviderType.OVA, ProviderType.LIBVIRT})
# libvirt's cold path is flow 2 too (the populator reads the disk through the provider),
# with an in-place conversion after the copy: its guests need not have virtio drivers.
POPULATOR_SOURCES = frozenset({ProviderType.OVIRT, ProviderType.OPENSTACK, ProviderType.LIBVIRT})


@dataclass(frozen=True)
class Facts:
    """What decides a VM's itinerary."""

    source: ProviderType
    warm: bool = False
    remote: bool = False
    run_target: bool = False  # the target VM is powered on at the end
    pre_hook: bool = False
    post_hook: bool = False
    raw_copy: bool = False  # the Plan's skipGuestConversion: disks copied as they are
    virtio_drivers: bool = False  # the source's inventory shows the guest has them
    importer_copy: bool = False  # the provider copies cold disks with the importer (flow 1)

    @property
    def needs_conversion(self) -> bool:
        return self.source in NEEDS_CONVERSION and not (self.raw_copy or self.virtio_drivers)


Predicate = Callable[[Facts], bool]
Absorb = Callable[[VmState, Event], None]


def always(f: Facts) -> bool:
    return True


def cold(f: Facts) -> bool:
    return not f.warm


def warm(f: Facts) -> bool:
    return f.warm


def needs_conversion(f: Facts) -> bool:
    return f.needs_conversion


def run_target(f: Facts) -> bool:
    return f.run_target


def pre_hook(f: Facts) -> bool:
    return f.pre_hook


def post_hook(f: Facts) -> bool:
    return f.post_hook


@dataclass(frozen=True)
class Step:
    phase: Phase
    owner: Service
    run: steps.StepFn
    when: Predicate = always
    done_on: tuple[type[Event], ...] = ()
    absorb: Absorb | None = None
    instant: bool = False  # a marker step (Started, Completed): recorded, nothing run


C, VOL, CONV, VMS = Service.CONTROLLER, Service.VOLUME, Service.CONVERSION, Service.VM

_START = (
    Step(Phase.STARTED, C, steps.started, instant=True),
    Step(Phase.PRE_HOOK, C, steps.run_hook(Phase.PRE_HOOK), when=pre_hook),
)
_COLD_POWER_OFF = (
    Step(Phase.STORE_POWER_STATE, C, steps.store_power_state, when=cold),
    Step(Phase.POWER_OFF_SOURCE, C, steps.power_off_source, when=cold),
)
_FINISH = (
    Step(Phase.CREATE_VM, VMS, steps.create_vm, done_on=(vm.VmCreated,)),
    Step(Phase.POWER_ON, VMS, steps.power_on, when=run_target, done_on=(vm.VmRunning,)),
    Step(Phase.POST_HOOK, C, steps.run_hook(Phase.POST_HOOK), when=post_hook),
    Step(Phase.COMPLETED, C, steps.completed, instant=True),
)


def _create(source: volume.VolumeSource) -> Step:
    return Step(
        Phase.CREATE_DATA_VOLUMES,
        VOL,
        steps.create_volumes(source),
        done_on=(volume.VolumesCreated,),
        absorb=steps.absorb_volumes,
    )


_ALLOCATE = Step(
    Phase.ALLOCATE_DISKS,
    VOL,
    steps.allocate_disks,
    done_on=(volume.DisksAllocated,),
    absorb=steps.absorb_volumes,
)


def _copy(phase: Phase, *, final: bool, when: Predicate = always) -> Step:
    return Step(
        phase,
        VOL,
        steps.copy_disks(phase, final=final),
        when=when,
        done_on=(volume.DisksCopied,),
        absorb=steps.absorb_copies,
    )


def _convert(mode: conversion.ConversionMode, when: Predicate = always) -> Step:
    return Step(
        Phase.CONVERT_GUEST,
        CONV,
        steps.convert_guest(mode),
        when=when,
        done_on=(conversion.GuestConverted,),
        absorb=steps.absorb_conversion,
    )


FLOWS: dict[Flow, tuple[Step, ...]] = {
    # 1. warm, or cold to a remote cluster: DataVolumes with the importer.
    Flow.IMPORTER: (
        *_START,
        *_COLD_POWER_OFF,
        _create(volume.VolumeSource.IMPORTER),
        # pvcinit: a VM's claims placed together before Ferry's transfer pods (each
        # using one claim) become their first consumers on different nodes
        _ALLOCATE,
        Step(Phase.CREATE_SNAPSHOT, C, steps.create_snapshot, when=warm),
        _copy(Phase.COPY_DISKS, final=False),
        Step(Phase.COPYING_PAUSED, C, steps.copying_paused, when=warm),
        Step(Phase.STORE_POWER_STATE, C, steps.store_power_state, when=warm),
        Step(Phase.POWER_OFF_SOURCE, C, steps.power_off_source, when=warm),
        Step(Phase.CREATE_FINAL_SNAPSHOT, C, steps.create_snapshot, when=warm),
        _copy(Phase.FINALIZE, final=True, when=warm),
        _convert(conversion.ConversionMode.IN_PLACE, when=needs_conversion),
        *_FINISH,
    ),
    # 2. cold oVirt/OpenStack to the local cluster: PVC + populator, no conversion.
    Flow.POPULATOR: (
        *_START,
        *_COLD_POWER_OFF,
        _create(volume.VolumeSource.POPULATOR),
        _ALLOCATE,
        _copy(Phase.COPY_DISKS, final=True),
        _convert(conversion.ConversionMode.IN_PLACE, when=needs_conversion),
        *_FINISH,
    ),
    # 3. cold VMware/OVA to the local cluster: blank volumes, virt-v2v converts and copies.
    Flow.CONVERSION: (
        *_START,
        *_COLD_POWER_OFF,
        _create(volume.VolumeSource.BLANK),
        _ALLOCATE,
        _convert(conversion.ConversionMode.FULL),
        *_FINISH,
    ),
}


def select_flow(f: Facts) -> Flow:
    """Which of the three shapes a VM takes.

    Raw copy (``skipGuestConversion``) keeps a populator source on flow 2 without
    its in-place conversion, and moves a flow-3 source (VMware, OVA) to flow 1's
    verified importer copy: without virt-v2v nothing else would write the disks.
    A provider that asks for it (``Vm.importer_copy``) has its cold VMs copied by the
    importer too, then converted in place: flow 1 without precopies.
    """
    if f.warm or f.remote:
        return Flow.IMPORTER
    if f.source in POPULATOR_SOURCES:
        return Flow.POPULATOR
    if f.needs_conversion and not f.importer_copy:
        return Flow.CONVERSION
    # Raw copy of a VMware/OVA guest: nothing converts, so the importer copies the
    # disks unchanged (and verifies them) instead of virt-v2v writing them.
    return Flow.IMPORTER  # a KubeVirt source exports disks an importer can read as they are


def build(f: Facts) -> tuple[Flow, list[Step]]:
    flow = select_flow(f)
    return flow, [s for s in FLOWS[flow] if s.when(f)]


def notes(f: Facts, flow: Flow) -> list[str]:
    """Why the itinerary has (or lacks) its conditional steps, in the user's words."""
    if flow is Flow.CONVERSION or f.source not in NEEDS_CONVERSION:
        return []  # flow 3 always converts; the other sources never do
    if f.importer_copy and not f.warm and f.needs_conversion:
        return [
            "disks copied by the importer, then ConvertGuest in place: the provider asks "
            "for it (flow 1 without precopies instead of virt-v2v copying them)"
        ]
    if f.virtio_drivers:
        return [
            "no guest conversion: the guest already runs on virtio disks and NICs, "
            "so it has their drivers"
        ]
    return [
        "ConvertGuest (in place) added: the source does not show virtio drivers in the "
        "guest, which KubeVirt's virtio disks and NICs need to boot"
    ]


_INDEX: dict[tuple[Flow, str], Step] = {}
for _flow, _steps in FLOWS.items():
    for _step in _steps:
        # a phase appears at most once per VM (cold and warm variants exclude each other),
        # and both variants run the same function, so the first is the one to find
        _INDEX.setdefault((_flow, _step.phase.value), _step)


def step_of(flow: Flow, phase: str) -> Step:
    return _INDEX[(flow, phase)]
