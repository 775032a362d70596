"""The message bases: the step every answering event carries, and replies built from commands."""

from __future__ import annotations

import msgspec

from ferry.proto import registry, vm, volume
from ferry.proto.base import StepEvent


def test_step_events_keep_their_tag_and_json() -> None:
    # Given an event answering a step, as the wire carried it before the base existed
    wire = (
        b'{"type":"vm.vm_stopped.v1","plan":"p","migration":"m","vm":"v",'
        b'"step":"PowerOff","name":"n"}'
    )

    # When it is decoded and encoded again
    evt = msgspec.json.decode(wire, type=vm.VmStopped)

    # Then the step is a typed field and the bytes are the same
    assert isinstance(evt, StepEvent) and evt.step == "PowerOff"
    assert msgspec.json.encode(evt) == wire


def test_thirteen_events_share_the_step_base() -> None:
    # Given every registered message type
    stepped = {cls.type_name() for cls in registry.MESSAGES if issubclass(cls, StepEvent)}

    # Then each event that answers a step derives from the one base
    assert len(stepped) == 13
    assert {"volume.disk_progress.v1", "migration.vm_canceled.v1"} <= stepped


def test_reply_copies_ids_and_step_from_the_command() -> None:
    # Given a command sent by an itinerary step
    cmd = vm.PowerOff(
        plan="p", migration="m", vm="v", step="PowerOff", attempt=3, namespace="ns", target_name="t"
    )

    # When an event answers it
    evt = vm.VmStopped(**cmd.reply(), name="t")

    # Then it is about the same plan, migration, VM and step
    assert (evt.plan, evt.migration, evt.vm, evt.step) == ("p", "m", "v", "PowerOff")
    cleaned = volume.VolumesCleaned(**cmd.reply(), removed=["a"])
    assert cleaned.step == "PowerOff" and cleaned.removed == ["a"]
