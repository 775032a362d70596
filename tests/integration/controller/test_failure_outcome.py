"""The controller reads why a service gave up from ``Failed.outcome``, never from its text.

A reason is a sentence for people; its wording may change in any service. These
failures carry a reason that says nothing about retries, so only the field can
tell the controller whether another attempt may help.
"""

from __future__ import annotations

from controller_harness import apply, documents, eventually, make_vm
from controller_stack import Stack

from ferry.proto import migration, volume
from ferry.proto.base import FailureOutcome
from ferry.proto.inventory import ProviderType


async def _step_failures(stack: Stack) -> list[migration.StepFailed]:
    return [m for t, m in await stack.events("m1") if t == "migration.step_failed.v1"]


async def test_a_command_that_ran_out_of_deliveries_is_retried_whatever_its_reason(
    stack: Stack,
) -> None:
    # Given a copy in progress
    stack.source("src", [make_vm("id-a", ProviderType.OVIRT)])
    await apply(stack.bus, documents("ovirt", ["id-a"]))
    stack.services.script[("id-a", "CopyDisks")] = "hold"
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(lambda: ("id-a", "CopyDisks") in stack.services.holding, what="copy runs")

    # When the volume service reports it gave up, with a reason that does not say so
    await stack.bus.publish(
        volume.VolumeFailed(
            plan="plan1",
            migration="m1",
            vm="id-a",
            command_type=volume.CopyDisks.type_name(),
            step="CopyDisks",
            attempt=1,
            reason="the datastore was busy",
            deliveries=1,
            outcome=FailureOutcome.GAVE_UP,
        )
    )

    # Then the step failure is transient: the controller will run the copy again
    async def reported() -> bool:
        return bool(await _step_failures(stack))

    await eventually(reported, what="step failure recorded")
    failures = await _step_failures(stack)
    assert [(f.step, f.will_retry) for f in failures] == [("CopyDisks", True)]
    stack.services.released.add(("id-a", "CopyDisks"))
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"


async def test_a_permanent_failure_is_not_retried_whatever_its_reason(stack: Stack) -> None:
    # Given a copy in progress
    stack.source("src", [make_vm("id-a", ProviderType.OVIRT)])
    await apply(stack.bus, documents("ovirt", ["id-a"]))
    stack.services.script[("id-a", "CopyDisks")] = "hold"
    stack.run_services()
    stack.run_controller()
    await stack.migrate("m1")
    await eventually(lambda: ("id-a", "CopyDisks") in stack.services.holding, what="copy runs")

    # When the volume service reports a permanent failure whose reason reads like a give-up
    await stack.bus.publish(
        volume.VolumeFailed(
            plan="plan1",
            migration="m1",
            vm="id-a",
            command_type=volume.CopyDisks.type_name(),
            step="CopyDisks",
            attempt=1,
            reason="gave up after asking the datastore nicely",
            deliveries=1,
            outcome=FailureOutcome.PERMANENT,
        )
    )

    # Then the VM fails without another attempt
    stack.services.released.add(("id-a", "CopyDisks"))
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Failed"
    assert [f.will_retry for f in await _step_failures(stack)] == [False]
