"""The controller's memory does not grow with finished migrations: an ended migration's
VMs leave its caches and tables, and a restarted controller does not load them again,
while a later migration of the plan still skips the VMs that already moved."""

from __future__ import annotations

import time

from controller_harness import apply, documents, eventually, make_vm, providers_for
from controller_stack import Stack, controller_settings

from ferry.migration_controller import app, retention
from ferry.proto.inventory import ProviderType
from ferry.proto.subjects import Bucket

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


async def test_an_ended_migrations_state_leaves_the_bus_after_its_retention(
    stack: Stack,
) -> None:
    # Given a migration that ran to its end, and the controller that drove it
    stack.source("src", [make_vm(i, ProviderType.OVA) for i in IDS])
    await apply(stack.bus, documents("ova", IDS))
    stack.run_services()
    ctl = stack.run_controller()
    await stack.migrate("m1")
    assert (await stack.wait_end("m1"))["status"]["phase"] == "Succeeded"
    assert len(await stack.vms("m1")) == len(IDS)

    # When a sweep runs before the retention ran out, nothing goes
    soon = retention.Retention(ctl.objects, ctl.vms, 3600, time.time, removed=ctl._removed)
    assert await soon.sweep() == []
    assert len(await stack.vms("m1")) == len(IDS)

    # And when it runs after, every VM state of the migration goes with its history
    later = retention.Retention(
        ctl.objects, ctl.vms, 3600, lambda: time.time() + 3601, removed=ctl._removed
    )
    removed = await later.sweep()

    # Then the bucket holds nothing of it (no revision, no delete marker)
    assert sorted(removed) == sorted(f"m1.{i}" for i in IDS)
    info = await stack.bus.js.stream_info(
        f"KV_{Bucket.VMS.value}", subjects_filter=f"$KV.{Bucket.VMS.value}.m1.>"
    )
    assert not info.state.subjects
    # and the user's Migration object stays; the controller remembers nothing of it
    assert (await stack.migration("m1"))["status"]["phase"] == "Succeeded"
    assert "m1" not in ctl.completion._completed
    assert _remembered(ctl, "m1") == []


async def test_the_retention_never_removes_a_migration_still_going(stack: Stack) -> None:
    # Given a migration whose VMs are still being copied (the volume step holds)
    stack.source("src", [make_vm(i, ProviderType.OVA) for i in IDS[:2]])
    await apply(stack.bus, documents("ova", IDS[:2]))
    for i in IDS[:2]:
        stack.services.script[(i, "CreateDataVolumes")] = "hold"
    stack.run_services()
    ctl = stack.run_controller()
    await stack.migrate("m2")
    await eventually(lambda: _has_vms(stack, "m2"), what="m2's VMs stored")

    # When a sweep runs long after, with a retention of one second
    late = retention.Retention(ctl.objects, ctl.vms, 1, lambda: time.time() + 10**6)

    # Then nothing of the running migration goes
    assert await late.sweep() == []
    assert len(await stack.vms("m2")) == 2
    stack.services.released.update((i, "CreateDataVolumes") for i in IDS[:2])


async def _has_vms(stack: Stack, name: str) -> bool:
    return len(await stack.vms(name)) > 0


def test_the_controller_runs_the_retention_with_its_setting() -> None:
    settings = controller_settings("nats://127.0.0.1:1")
    assert settings.controller.finished_retention_seconds == 30 * 24 * 3600
    assert retention.Retention(None, None, 30 * 24 * 3600, time.time).interval == 3600  # type: ignore[arg-type]
    assert retention.Retention(None, None, 5, time.time).interval == 1.0  # type: ignore[arg-type]
