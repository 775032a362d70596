"""The engine's transitions, without I/O: what each happening does to a VM's state."""

from __future__ import annotations

import msgspec

from ferry.migration_controller import engine, steps
from ferry.proto import migration, volume
from ferry.proto.inventory import Volume
from ferry.proto.phases import StepStatus, VmStatus
from ferry.proto.state import VmState


def runs(actions: list[engine.Action]) -> list[tuple[str, int]]:
    return [(a.step, a.attempt) for a in actions if isinstance(a, engine.Run)]


def events(actions: list[engine.Action]) -> list[str]:
    return [type(a.event).__name__ for a in actions if isinstance(a, engine.Emit)]


def drive_to(state: VmState, step: str, now: float = 1000.0) -> None:
    """Complete every step before ``step``."""
    actions = engine.start(state, now)
    while True:
        ((name, _),) = runs(actions)
        if name == step:
            return
        actions = engine.step_done(state, name, now)


def test_start_runs_the_first_step(state: VmState) -> None:
    # Given a queued VM
    assert state.status is VmStatus.QUEUED
    # When it starts
    actions = engine.start(state, 1000.0)
    # Then it is running, says so, records the instant Started step, and runs the next (attempt 1)
    assert state.status is VmStatus.RUNNING
    assert events(actions) == ["VmStarted", "StepStarted", "StepCompleted", "StepStarted"]
    assert runs(actions) == [("StorePowerState", 1)]
    assert state.steps[0].status is StepStatus.COMPLETED
    assert state.steps[1].status is StepStatus.RUNNING


def test_the_whole_itinerary_in_order(state: VmState) -> None:
    # Given a started VM
    actions = engine.start(state, 1000.0)
    order = []
    # When every step completes as soon as it runs
    while runs(actions):
        ((name, _),) = runs(actions)
        order.append(name)
        actions = engine.step_done(state, name, 1001.0)
    # Then each step ran once in itinerary order (markers need no run) and the VM succeeded
    assert order == [s.name for s in state.steps if not s.instant]
    assert [s.name for s in state.steps if s.instant] == ["Started", "Completed"]
    assert state.status is VmStatus.SUCCEEDED
    assert state.phase == "Completed"
    assert events(actions)[-1] == "VmCompleted"
    assert all(s.status is StepStatus.COMPLETED and s.attempt == 1 for s in state.steps)


def test_a_stale_or_duplicate_completion_changes_nothing(state: VmState) -> None:
    # Given a VM running CreateDataVolumes
    drive_to(state, "CreateDataVolumes")
    before = (state.cursor, [s.status for s in state.steps])
    # When a completion for a step that is not running arrives (a redelivery)
    actions = engine.step_done(state, "StorePowerState", 1002.0)
    # Then nothing happens
    assert actions == []
    assert (state.cursor, [s.status for s in state.steps]) == before


def test_transient_failure_is_retried_after_backoff(state: VmState) -> None:
    # Given a VM running CreateDataVolumes, attempt 1
    drive_to(state, "CreateDataVolumes")
    # When the step fails transiently
    actions = engine.step_failed(
        state, "CreateDataVolumes", 1, "disk busy", permanent=False, now=1000.0
    )
    # Then it waits for the backoff and says it will retry
    assert events(actions) == ["StepFailed"]
    wake = [a for a in actions if isinstance(a, engine.WakeAt)]
    assert wake == [engine.WakeAt(1000.0 + engine.backoff(1))]
    assert state.current is not None and state.current.status is StepStatus.PENDING
    # And a tick before the backoff does nothing new, after it runs attempt 2
    assert runs(engine.tick(state, 1000.5)) == []
    assert runs(engine.tick(state, 1000.0 + engine.backoff(1))) == [("CreateDataVolumes", 2)]
    assert state.errors[0].reason == "disk busy"


def test_out_of_attempts_fails_the_vm_and_restores_power(state: VmState) -> None:
    # Given a VM whose source was on and was powered off
    drive_to(state, "CreateDataVolumes")
    assert state.source_power == "" and state.step("PowerOffSource").status is StepStatus.COMPLETED
    state.source_power = "on"
    state.powered_off = True
    now = 1000.0
    # When the step fails on every attempt
    for attempt in range(1, state.max_attempts + 1):
        actions = engine.step_failed(
            state, "CreateDataVolumes", attempt, "no space", permanent=False, now=now
        )
        now += 500
        engine.tick(state, now)
    # Then the VM failed with that reason, power is restored, volumes cleaned
    assert state.status is VmStatus.FAILED
    assert [type(a).__name__ for a in actions] == [
        "Emit",
        "RestorePower",
        "Cleanup",
        "Emit",
        "Finished",
    ]
    failed = [a.event for a in actions if isinstance(a, engine.Emit)][-1]
    assert isinstance(failed, migration.VmFailed)
    assert (
        failed.reason == "no space" and failed.power_restored and failed.step == "CreateDataVolumes"
    )
    assert len(state.errors) == state.max_attempts


def test_permanent_failure_fails_at_once(state: VmState) -> None:
    # Given a VM running ConvertGuest, source was off
    drive_to(state, "ConvertGuest")
    state.source_power = "off"
    # When the conversion fails permanently
    actions = engine.step_failed(
        state, "ConvertGuest", 1, "no bootable OS", permanent=True, now=1000.0
    )
    # Then the VM failed without a retry and without powering anything on
    assert state.status is VmStatus.FAILED
    assert not any(isinstance(a, engine.RestorePower) for a in actions)
    assert state.current is not None and state.current.status is StepStatus.FAILED


def test_late_failure_of_an_old_attempt_is_ignored(state: VmState) -> None:
    # Given CreateDataVolumes failed once and is on attempt 2
    drive_to(state, "CreateDataVolumes")
    engine.step_failed(state, "CreateDataVolumes", 1, "x", permanent=False, now=1000.0)
    engine.tick(state, 2000.0)
    # When a failure of attempt 1 arrives again
    actions = engine.step_failed(state, "CreateDataVolumes", 1, "x", permanent=True, now=2001.0)
    # Then nothing changes
    assert actions == [] and state.status is VmStatus.RUNNING


def test_cancel_in_every_phase(state: VmState) -> None:
    # Given the same VM canceled at each of its steps
    for index, step in enumerate(s.name for s in state.steps):
        if state.steps[index].instant:
            continue  # markers complete in the transition that reaches them: nothing to cancel
        fresh = msgspec.json.decode(msgspec.json.encode(state), type=VmState)
        drive_to(fresh, step)
        fresh.source_power = "on" if index > 1 else ""
        fresh.powered_off = index > 2
        # When it is canceled
        actions = engine.cancel(fresh, "user", 1500.0)
        # Then it ends Canceled, every service is told, and power comes back if it was touched
        assert fresh.status is VmStatus.CANCELED, step
        assert isinstance(actions[0], engine.MarkCanceled)
        assert any(isinstance(a, engine.RestorePower) for a in actions) == (index >= 2), step
        assert events(actions)[-1] == "VmCanceled"
        # And canceling again is a no-op
        assert engine.cancel(fresh, "user", 1501.0) == []


def test_cancel_of_a_queued_vm(state: VmState) -> None:
    # Given a VM still waiting for a slot
    # When it is canceled
    actions = engine.cancel(state, "user", 1000.0)
    # Then it ends Canceled without any clean-up to do
    assert state.status is VmStatus.CANCELED
    assert events(actions) == ["VmCanceled"]
    assert not any(isinstance(a, (engine.Cleanup, engine.MarkCanceled)) for a in actions)


def test_progress_per_disk(state: VmState) -> None:
    # Given a VM converting its disks
    drive_to(state, "ConvertGuest")
    # When a disk reports bytes done
    actions = engine.progress(state, "ConvertGuest", "vm-1-d2", 1 << 30, 2 << 30)
    # Then the disk and the VM totals move, and a Progress event says so
    (emit,) = actions
    assert isinstance(emit, engine.Emit) and isinstance(emit.event, migration.Progress)
    assert emit.event.done == 1 << 30 and emit.event.total == 3 << 30
    assert emit.event.disks == {"vm-1-d1": 0, "vm-1-d2": 1 << 30}


def test_warm_precopy_loop_until_cutover(warm: VmState) -> None:
    # Given a warm VM
    drive_to(warm, "CopyingPaused")
    # When the pause says to wait, then the round's time passes
    assert engine.step_wait(warm, "CopyingPaused", 5000.0) == [engine.WakeAt(5000.0)]
    assert runs(engine.tick(warm, 4000.0)) == []
    assert runs(engine.tick(warm, 5000.0)) == [("CopyingPaused", 1)]
    # And the pause asks for another round
    actions = engine.step_repeat(warm, "CopyingPaused", "CreateSnapshot", 5000.0)
    # Then the snapshot and copy run again as precopy 1
    assert runs(actions) == [("CreateSnapshot", 1)]
    assert warm.precopy == 1
    # And a cutover set earlier wakes the paused step at the cutover
    engine.step_done(warm, "CreateSnapshot", 5001.0)
    engine.step_done(warm, "CopyDisks", 5002.0)
    engine.step_wait(warm, "CopyingPaused", 9000.0)
    assert engine.set_cutover(warm, 6000.0) == [engine.WakeAt(6000.0)]
    assert runs(engine.tick(warm, 6000.0)) == [("CopyingPaused", 1)]


def test_finishing_again_after_a_restart(state: VmState) -> None:
    # Given a VM that succeeded (source was on, powered off) but whose end was not finalized
    actions = engine.start(state, 1000.0)
    while runs(actions):
        ((name, _),) = runs(actions)
        if name == "PowerOffSource":
            state.source_power, state.powered_off = "on", True
        actions = engine.step_done(state, name, 1001.0)
    assert state.status is VmStatus.SUCCEEDED and not state.finalized
    # When the controller restarts and finishes it again
    again = engine.finish_actions(state)
    # Then the source is left off and nothing is cleaned: only the slot is released
    assert again == [engine.Finished(VmStatus.SUCCEEDED)]


def test_finishing_a_failed_vm_again_restores_power_and_cleans(state: VmState) -> None:
    # Given a VM that failed after its source was powered off, not finalized
    drive_to(state, "ConvertGuest")
    state.source_power, state.powered_off = "on", True
    engine.step_failed(state, "ConvertGuest", 1, "boom", permanent=True, now=1000.0)
    # When the controller restarts and finishes it again
    again = engine.finish_actions(state)
    # Then power is restored and volumes cleaned, then the slot released
    assert again == [engine.RestorePower("on"), engine.Cleanup(), engine.Finished(VmStatus.FAILED)]


def test_a_vm_failing_once_create_vm_ran_cleans_its_virtual_machine_too(state: VmState) -> None:
    # Given a VM whose CreateVM step ran (its VirtualMachine may exist)
    drive_to(state, "CreateVM")
    # When that step fails for good
    actions = engine.step_failed(state, "CreateVM", 1, "boom", permanent=True, now=1000.0)
    # Then the clean-up covers the VirtualMachine as well as the volumes, now and after a restart
    assert engine.Cleanup(vm=True) in actions
    assert engine.Cleanup(vm=True) in engine.finish_actions(state)


def test_the_volumes_a_copy_bound_are_the_ones_the_vm_gets(warm: VmState) -> None:
    # Given a warm VM whose volumes were created (not yet holding data, no path)
    ids = {"plan": warm.plan, "migration": warm.migration, "vm": warm.vm}
    disk = warm.inventory.disks[0].id
    created = Volume(disk_id=disk, name="v0", size=1, phase="Pending")
    steps.absorb_volumes(
        warm, volume.VolumesCreated(**ids, step="CreateDataVolumes", volumes=[created])
    )
    # When a copy round reports them bound and filled
    bound = Volume(disk_id=disk, name="v0", size=1, path="/data/v0.img", phase="Succeeded")
    steps.absorb_copies(
        warm,
        volume.DisksCopied(**ids, step="CopyDisks", precopy=0, volumes=[bound], checkpoint="c1"),
    )
    # Then the VM's state holds the bound volume (CreateVM boots from its path, with or
    # without a conversion after the copy)
    assert [(v.name, v.path) for v in warm.volumes if v.disk_id == disk] == [("v0", "/data/v0.img")]
