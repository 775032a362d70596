"""Each (source type, warm/cold, local/remote) combination gets exactly this step order."""

from __future__ import annotations

import pytest

from ferry.migration_controller import itinerary
from ferry.proto.inventory import ProviderType
from ferry.proto.phases import Flow
from ferry.proto.subjects import Service

P = ProviderType

COLD_LOCAL_CONVERSION = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "ConvertGuest",
    "CreateVM",
    "PowerOn",
    "Completed",
]
COLD_LOCAL_POPULATOR = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "CreateVM",
    "PowerOn",
    "Completed",
]
COLD_LOCAL_POPULATOR_CONVERTED = [
    *COLD_LOCAL_POPULATOR[:6],
    "ConvertGuest",
    *COLD_LOCAL_POPULATOR[6:],
]
COLD_REMOTE_CONVERTED = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "ConvertGuest",
    "CreateVM",
    "PowerOn",
    "Completed",
]
COLD_REMOTE_PLAIN = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "CreateVM",
    "PowerOn",
    "Completed",
]
WARM_CONVERTED = [
    "Started",
    "CreateDataVolumes",
    "AllocateDisks",
    "CreateSnapshot",
    "CopyDisks",
    "CopyingPaused",
    "StorePowerState",
    "PowerOffSource",
    "CreateFinalSnapshot",
    "Finalize",
    "ConvertGuest",
    "CreateVM",
    "PowerOn",
    "Completed",
]
WARM_PLAIN = [s for s in WARM_CONVERTED if s != "ConvertGuest"]

# (source, warm, remote) -> (flow, steps): every combination, spelled out.
EXPECTED = {
    (P.VSPHERE, False, False): (Flow.CONVERSION, COLD_LOCAL_CONVERSION),
    (P.OVA, False, False): (Flow.CONVERSION, COLD_LOCAL_CONVERSION),
    (P.LIBVIRT, False, False): (Flow.POPULATOR, COLD_LOCAL_POPULATOR_CONVERTED),
    (P.OVIRT, False, False): (Flow.POPULATOR, COLD_LOCAL_POPULATOR),
    (P.OPENSTACK, False, False): (Flow.POPULATOR, COLD_LOCAL_POPULATOR),
    (P.KUBEVIRT, False, False): (Flow.IMPORTER, COLD_REMOTE_PLAIN),
    (P.VSPHERE, False, True): (Flow.IMPORTER, COLD_REMOTE_CONVERTED),
    (P.OVA, False, True): (Flow.IMPORTER, COLD_REMOTE_CONVERTED),
    (P.LIBVIRT, False, True): (Flow.IMPORTER, COLD_REMOTE_CONVERTED),
    (P.OVIRT, False, True): (Flow.IMPORTER, COLD_REMOTE_PLAIN),
    (P.OPENSTACK, False, True): (Flow.IMPORTER, COLD_REMOTE_PLAIN),
    (P.KUBEVIRT, False, True): (Flow.IMPORTER, COLD_REMOTE_PLAIN),
    (P.VSPHERE, True, False): (Flow.IMPORTER, WARM_CONVERTED),
    (P.VSPHERE, True, True): (Flow.IMPORTER, WARM_CONVERTED),
    (P.OVIRT, True, False): (Flow.IMPORTER, WARM_PLAIN),
    (P.OVIRT, True, True): (Flow.IMPORTER, WARM_PLAIN),
    (P.OVA, True, False): (Flow.IMPORTER, WARM_CONVERTED),
    (P.OVA, True, True): (Flow.IMPORTER, WARM_CONVERTED),
    (P.OPENSTACK, True, False): (Flow.IMPORTER, WARM_PLAIN),
    (P.KUBEVIRT, True, True): (Flow.IMPORTER, WARM_PLAIN),
    (P.LIBVIRT, True, False): (Flow.IMPORTER, WARM_CONVERTED),
    (P.OPENSTACK, True, True): (Flow.IMPORTER, WARM_PLAIN),
    (P.KUBEVIRT, True, False): (Flow.IMPORTER, WARM_PLAIN),
    (P.LIBVIRT, True, True): (Flow.IMPORTER, WARM_CONVERTED),
}


def test_every_combination_is_spelled_out() -> None:
    # Given every source type, warm and cold, local and remote
    combos = {(p, w, r) for p in P for w in (False, True) for r in (False, True)}
    # Then each one is listed above (preflight refuses warm for sources that cannot do it,
    # but the itinerary's shape is still defined)
    assert combos == set(EXPECTED)


@pytest.mark.parametrize(("source", "warm", "remote"), sorted(EXPECTED, key=str))
def test_step_order(source: ProviderType, warm: bool, remote: bool) -> None:
    # Given a VM that was running at the source
    facts = itinerary.Facts(source=source, warm=warm, remote=remote, run_target=True)
    # When its itinerary is built
    flow, steps = itinerary.build(facts)
    # Then the flow and the exact order of steps are the expected ones
    want_flow, want_steps = EXPECTED[(source, warm, remote)]
    assert flow is want_flow
    assert [s.phase.value for s in steps] == want_steps


def test_power_on_only_when_the_target_should_run() -> None:
    # Given a VM that was off at the source (targetPowerState auto)
    facts = itinerary.Facts(source=P.OVA, run_target=False)
    # When its itinerary is built
    _, steps = itinerary.build(facts)
    # Then there is no PowerOn step
    assert "PowerOn" not in [s.phase.value for s in steps]


def test_hooks_wrap_the_itinerary() -> None:
    # Given a VM with a pre and a post hook
    facts = itinerary.Facts(source=P.OVIRT, run_target=True, pre_hook=True, post_hook=True)
    # When its itinerary is built
    _, steps = itinerary.build(facts)
    names = [s.phase.value for s in steps]
    # Then PreHook runs right after Started and PostHook right before Completed
    assert names[:2] == ["Started", "PreHook"]
    assert names[-2:] == ["PostHook", "Completed"]


def test_each_step_has_its_owner_and_completion_event() -> None:
    # Given every step of every flow
    for flow, steps in itinerary.FLOWS.items():
        for step in steps:
            # Then service-owned steps say which event completes them; controller steps need none
            if step.owner is Service.CONTROLLER:
                assert step.done_on == (), (flow, step.phase)
            else:
                assert step.done_on, (flow, step.phase)


COLD_RAW_COPY = [
    "Started",
    "StorePowerState",
    "PowerOffSource",
    "CreateDataVolumes",
    "AllocateDisks",
    "CopyDisks",
    "CreateVM",
    "PowerOn",
    "Completed",
]


@pytest.mark.parametrize("source", [P.OVA, P.VSPHERE])
def test_raw_copy_of_a_flow3_source_copies_with_the_importer_and_never_converts(
    source: ProviderType,
) -> None:
    # Given a cold VMware/OVA VM of a Plan with skipGuestConversion
    facts = itinerary.Facts(source=source, run_target=True, raw_copy=True)
    # When its itinerary is built
    flow, steps = itinerary.build(facts)
    # Then the importer copies its disks unchanged and nothing runs virt-v2v
    assert flow is Flow.IMPORTER
    assert [s.phase.value for s in steps] == COLD_RAW_COPY


@pytest.mark.parametrize("warm", [False, True])
def test_raw_copy_of_libvirt_keeps_its_flow_without_the_in_place_conversion(warm: bool) -> None:
    # Given a libvirt VM, cold or warm, with and without raw copy
    converted = itinerary.build(itinerary.Facts(source=P.LIBVIRT, warm=warm, run_target=True))
    raw = itinerary.build(
        itinerary.Facts(source=P.LIBVIRT, warm=warm, run_target=True, raw_copy=True)
    )
    # Then raw copy takes the same flow and steps, minus ConvertGuest
    assert raw[0] is converted[0]
    assert [s.phase.value for s in raw[1]] == [
        s.phase.value for s in converted[1] if s.phase.value != "ConvertGuest"
    ]


def test_a_cold_vmware_vm_the_provider_copies_with_the_importer_converts_in_place() -> None:
    # Given a cold vSphere VM whose provider asks for the importer copy (coldTransfer)
    facts = itinerary.Facts(source=P.VSPHERE, run_target=True, importer_copy=True)
    # When its itinerary is built
    flow, steps = itinerary.build(facts)
    # Then it is flow 1 without precopies: the importer copies, virt-v2v-in-place converts
    assert flow is Flow.IMPORTER
    assert [s.phase.value for s in steps] == COLD_REMOTE_CONVERTED
    assert "importer" in itinerary.notes(facts, flow)[0]
    # And without the provider's ask the same VM takes flow 3
    assert itinerary.build(itinerary.Facts(source=P.VSPHERE, run_target=True))[0] is (
        Flow.CONVERSION
    )
