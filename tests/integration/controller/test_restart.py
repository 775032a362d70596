"""kill -9 of the controller (a real child process) at each step boundary, then a restart:
the migration completes and no step runs twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from controller_harness import (
    apply,
    documents,
    eventually,
    make_vm,
    migration_doc,
    providers_for,
)
from controller_stack import Stack, controller_settings

from ferry.migration_controller import app
from ferry.proto.inventory import ProviderType

CHILD = Path(__file__).parent / "child_controller.py"


class ChildController:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        sources = {name: str(p.root) for name, p in self.stack.sources.items()}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), self.stack.url, json.dumps(sources)],
            stdout=subprocess.PIPE,
            stderr=open(self.stack.tmp / f"controller-{self.starts}.log", "wb"),  # noqa: SIM115
            env=dict(os.environ),
        )
        self.starts += 1
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        assert line.startswith(b"ready"), line

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


SERVICE_STEPS = ["CreateDataVolumes", "AllocateDisks", "ConvertGuest", "CreateVM", "PowerOn"]


@pytest.mark.slow  # 20-60 s of kill-and-restart: kept out of make test-fast, run by make test
@pytest.mark.timeout(300)
async def test_kill_at_every_step_boundary(stack: Stack) -> None:
    # Given a running OVA VM whose every step is held, and the controller as a child process
    src = stack.source("src", [make_vm("id-a", ProviderType.OVA)])
    await apply(stack.bus, documents("ova", ["id-a"]))
    for what in ("power-state", "shutdown"):
        (src.root / f"hold-{what}-id-a").touch()
    for step in SERVICE_STEPS:
        stack.services.script[("id-a", step)] = "hold"
    stack.run_services()
    child = ChildController(stack)
    await child.start()
    try:
        await stack.migrate("m1")
        # When the controller is killed -9 as each step begins (source steps: while the provider
        # works; service steps: once the command arrived), and restarted; alternately the step
        # finishes while the controller is down, or after it is back
        for what in ("power-state", "shutdown"):
            await eventually(lambda w=what: (src.root / f"holding-{w}-id-a").exists(), what=what)
            child.kill()
            (src.root / f"hold-{what}-id-a").unlink()
            await child.start()
        for i, step in enumerate(SERVICE_STEPS):
            await eventually(
                lambda s=step: ("id-a", s) in stack.services.holding, timeout=60, what=step
            )
            child.kill()
            if i % 2 == 0:
                stack.services.released.add(("id-a", step))
                await child.start()
            else:
                await child.start()
                stack.services.released.add(("id-a", step))
        mig = await stack.wait_end("m1", timeout=120)
    finally:
        child.stop()
    # Then the migration succeeded after every restart
    assert child.starts == 1 + 2 + len(SERVICE_STEPS)
    assert mig["status"]["phase"] == "Succeeded"
    # And no service step ran twice, the source was powered off once and never on again
    assert stack.services.runs("id-a") == SERVICE_STEPS
    assert src.log() == ["off:id-a"]
    a = (await stack.vms("m1"))["id-a"]
    assert all(s["status"] == "Completed" and s["attempt"] == 1 for s in a["steps"])
    # And the audit stream says each step started once
    started = Counter(
        m.step for t, m in await stack.events("m1") if t == "migration.step_started.v1"
    )
    assert set(started.values()) == {1}


@pytest.mark.slow  # 20-60 s of kill-and-restart: kept out of make test-fast, run by make test
@pytest.mark.timeout(300)
async def test_kill_at_random_points_with_many_vms(stack: Stack) -> None:
    # Given twenty VMs with instant steps and the controller as a child process
    ids = [f"id-{i:02d}" for i in range(20)]
    src = stack.source("src", [make_vm(i, ProviderType.OVIRT) for i in ids])
    await apply(stack.bus, documents("ovirt", ids, max_in_flight=5))
    stack.run_services()
    child = ChildController(stack)
    await child.start()
    try:
        await stack.migrate("m1")
        # When the controller is killed -9 every few hundred milliseconds while they migrate
        for delay in (0.3, 0.5, 0.2, 0.7, 0.4, 0.6):
            await asyncio.sleep(delay)
            child.kill()
            await child.start()
        mig = await stack.wait_end("m1", timeout=180)
    finally:
        child.stop()
    # Then every VM succeeded and no (VM, step) ran twice
    assert mig["status"]["phase"] == "Succeeded"
    runs = Counter((vm, step) for vm, step, _ in stack.services.ran)
    assert set(runs.values()) == {1}
    assert len(runs) == len(ids) * 5
    assert sorted(src.log()) == sorted(f"off:{i}" for i in ids)


@pytest.mark.timeout(120)
async def test_a_start_cut_short_is_completed_on_restart(stack: Stack) -> None:
    # Given a start that stored its VMs but died before marking the migration Running,
    # and whose command JetStream will not deliver again (out of deliveries)
    ids = ["id-a", "id-b"]
    stack.source("src", [make_vm(i, ProviderType.OVIRT) for i in ids])
    await apply(stack.bus, documents("ovirt", ids))
    await apply(stack.bus, [migration_doc("m1")])
    roots = {name: p.root for name, p in stack.sources.items()}
    dying = app.build_router(
        stack.bus, controller_settings(stack.url), providers=providers_for(roots)
    )
    await dying.admission.start_migration("m1")
    await apply(stack.bus, [migration_doc("m1")])  # its status, as before the kill
    assert (await stack.migration("m1")).get("status", {}).get("phase", "") == ""
    assert set(await stack.vms("m1")) == set(ids)

    # When a controller starts with no command to take
    stack.run_services()
    stack.run_controller()
    mig = await stack.wait_end("m1", timeout=60)

    # Then it completed the start itself, and every VM migrated once
    assert mig["status"]["phase"] == "Succeeded"
    assert {v: s["status"] for v, s in (await stack.vms("m1")).items()} == {
        i: "Succeeded" for i in ids
    }
    runs = Counter((vm, step) for vm, step, _ in stack.services.ran)
    assert set(runs.values()) == {1} and len(runs) == len(ids) * 5
