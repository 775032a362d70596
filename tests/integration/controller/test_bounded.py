"""The controller's memory does not grow with finished migrations: an ended migration's
VMs leave its caches and tables, and a restarted controller does not load them again,
while a later migration of the plan still skips the VMs that already moved."""

from __future__ import annotations

from conftest import Stack, controller_settings
from controller_harness import apply, documents, make_vm, providers_for

from ferry.migration_controller import app
from ferry.proto.inventory import ProviderType

IDS = [f"id-{i}" for i in range(6)]


def _remembered(ctl: app.Controller, migration: str) -> list[str]:
    prefix = f"{migration}."
    return [
        *(k for k in ctl.vms.cache if k.startswith(prefix)),
        *ctl.scheduler.keys_of(migration),
        *(k for k in ctl.driver._locks if k.startswith(prefix)),
    ]


async def test_an_ended_migration_leaves_memory(stack: Stack) -> None:
    # Given a migration of six VMs that ran to its end
    stack.source("src", [make_vm(i, ProviderType.OVA) for i in IDS])
    await apply(stack.bus, documents("ova", IDS))
    stack.run_services()
    ctl = stack.run_controller()
    await stack.migrate("m1")
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    # Then the controller holds none of its VMs, only which of the plan's VMs succeeded
    assert _remembered(ctl, "m1") == []
    assert set(ctl.vms.succeeded["plan1"]) == set(IDS)
    # And a controller started afresh does not load them either
    roots = {name: p.root for name, p in stack.sources.items()}
    fresh = app.build_router(
        stack.bus, controller_settings(stack.url), providers=providers_for(roots)
    )
    await fresh.resume()
    assert _remembered(fresh, "m1") == []
    assert set(fresh.vms.succeeded["plan1"]) == set(IDS)
