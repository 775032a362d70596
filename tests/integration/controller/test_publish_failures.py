"""A publish that fails after a stored transition does not strand the VM.

The controller stores a VM's new state, then sends the next step's command. If
that send fails, the event that caused it is redelivered and finds its step done:
the next command must still go out, or the VM waits forever with a step marked
running that no service was asked to run.
"""

from __future__ import annotations

from typing import Any

import pytest
from controller_harness import apply, documents, make_vm
from controller_stack import Stack

from ferry.bus import PublishFailed
from ferry.migration_controller.driver import Driver
from ferry.proto import conversion
from ferry.proto.inventory import ProviderType


async def test_a_command_whose_publish_failed_is_sent_on_the_redelivery(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a controller whose first send of a ConvertGuest fails after the state was stored
    stack.source("src", [make_vm("id-a", ProviderType.OVA)])
    await apply(stack.bus, documents("ova", ["id-a"]))
    real = stack.bus.publish_many
    failed: list[str] = []

    async def flaky(messages: Any, *args: Any, **kwargs: Any) -> Any:
        batch = list(messages)
        if not failed and any(isinstance(m, conversion.ConvertGuest) for m in batch):
            failed.append("ConvertGuest")
            raise PublishFailed("ferry.cmd", "injected")
        return await real(batch, *args, **kwargs)

    monkeypatch.setattr(stack.bus, "publish_many", flaky)
    stack.run_services()
    stack.run_controller()
    # When the migration runs
    await stack.migrate("m1")
    mig = await stack.wait_end("m1", timeout=45)
    # Then the send failed once, and the VM still converted and completed, once
    assert failed == ["ConvertGuest"]
    assert mig["status"]["phase"] == "Succeeded"
    assert stack.services.runs("id-a").count("ConvertGuest") == 1


async def test_a_failed_scheduler_transition_is_retried_not_only_logged(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a controller whose first attempt to start a VM (its slot granted) fails
    stack.source("src", [make_vm("id-a", ProviderType.OVA)])
    await apply(stack.bus, documents("ova", ["id-a"]))
    real = Driver.transition
    failed: list[str] = []

    async def flaky(self: Driver, key: str, fn: Any, **kwargs: Any) -> None:
        if not failed and getattr(fn, "__qualname__", "").startswith("Driver.start"):
            failed.append(key)
            raise PublishFailed("ferry.cmd", "injected")
        await real(self, key, fn, **kwargs)

    monkeypatch.setattr(Driver, "transition", flaky)
    stack.run_services()
    stack.run_controller()
    # When the migration runs, Then the VM still migrates
    await stack.migrate("m1")
    mig = await stack.wait_end("m1", timeout=45)
    assert failed and mig["status"]["phase"] == "Succeeded"
