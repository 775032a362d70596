"""The per-VM state is stored by one process and read by others: its JSON names never change,
and a reader's view decodes what the controller stored."""

from __future__ import annotations

import msgspec

from ferry.proto.inventory import Disk, ProviderType, Vm
from ferry.proto.phases import Flow, MigrationPhase, StepStatus, VmStatus
from ferry.proto.state import DiskState, StepState, VmError, VmState, VmView
from ferry.proto.volume import SourceRef

STORED_NAMES = {
    "cancel_reason", "checkpoint", "created", "cursor", "cutover", "disks", "ended", "errors",
    "finalized", "rounds", "notes",
    "flow", "hooks", "host", "inspection", "inventory", "max_attempts", "max_precopies",
    "migration", "name", "namespace", "network_targets", "phase", "plan", "power_restored",
    "powered_off", "precopy", "precopy_interval", "provider", "remote", "retry_base",
    "run_target", "seq", "source_power", "started", "status", "steps", "target_name", "vm",
    "volume_targets", "volumes", "warm",
}  # fmt: skip


def a_state() -> VmState:
    return VmState(
        plan="p",
        migration="m",
        vm="id-1",
        name="web",
        target_name="web",
        namespace="migrated",
        seq=3,
        flow=Flow.CONVERSION,
        status=VmStatus.FAILED,
        steps=[StepState(name="CreateVM", service="vm", status=StepStatus.FAILED, attempt=2)],
        provider=SourceRef(provider="src", type=ProviderType.OVA, url="/srv"),
        inventory=Vm(
            id="id-1",
            name="web",
            provider_type=ProviderType.OVA,
            disks=[Disk(id="d1", name="d1", capacity=10)],
        ),
        disks=[DiskState(id="d1", name="d1", total=10, done=4)],
        errors=[VmError(step="CreateVM", attempt=2, reason="boom", time="t")],
    )


def test_the_stored_names_are_the_ones_stored_before() -> None:
    # Given the state as the controller stores it
    stored = msgspec.json.decode(msgspec.json.encode(a_state()))
    # Then its JSON names are exactly those earlier controllers wrote (a rename breaks a restart)
    assert set(stored) == STORED_NAMES


def test_a_reader_decodes_the_stored_state_as_its_view() -> None:
    # Given a stored state
    data = msgspec.json.encode(a_state())
    # When a reader decodes it as the view
    view = msgspec.json.decode(data, type=VmView)
    # Then it sees what people are shown, typed, and the controller's own fields are skipped
    assert (view.vm, view.seq, view.status, view.flow) == (
        "id-1",
        3,
        VmStatus.FAILED,
        Flow.CONVERSION,
    )
    assert (view.done_bytes, view.total_bytes, view.last_error) == (4, 10, "boom")
    assert view.steps[0].status is StepStatus.FAILED
    assert not isinstance(view, VmState)


def test_migration_phase_reads_stored_strings() -> None:
    # Given the phases a Migration's status has stored as plain strings
    # Then each reads back as the enum, and the empty one is shown as Pending
    assert MigrationPhase("") is MigrationPhase.NOT_STARTED
    assert MigrationPhase.NOT_STARTED.shown == "Pending"
    assert [MigrationPhase(p).ended for p in ("Running", "Succeeded", "Rejected")] == [
        False,
        True,
        True,
    ]
