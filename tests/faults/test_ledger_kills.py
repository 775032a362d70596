"""Kills counted by their effects: a publish ledger, not the deduplicating stream.

Three raw-copy migrations of small OVAs (no virt-v2v: the point is the bus) while:

- the controller is down longer than the stream's dedupe window (shortened to 3 s),
  so every command it re-issues on restart is a new message to the stream;
- the nats-server is down longer than the services' publish timeout (2 s), so
  publishes fail outright instead of being retried into a live server;
- the vm-service is killed as CreateVM is dispatched.

Every service writes each acknowledged publish to the ledger
(``FERRY_BUS__LEDGER_DIR``); :func:`ferry.testing.chaos.audit` then holds the run
to exactly one distinct completion per VM and one of each effect, source =
target bytes, one volume and one VirtualMachine per VM, no dead letter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.bus.ledger import read as read_ledger
from ferry.testing import chaos
from ferry.testing.migration import finished, of_type, start_migration
from ferry.testing.stack import EventRecorder, LocalStack

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

WINDOW, PUBLISH_TIMEOUT = 3.0, 2.0


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger"


@pytest.fixture
def stack(tmp_path: Path, ledger: Path) -> Iterator[LocalStack]:
    env = chaos.settings(
        ledger,
        FERRY_BUS__DUPLICATE_WINDOW_SECONDS=str(WINDOW),
        FERRY_BUS__PUBLISH_TIMEOUT_SECONDS=str(PUBLISH_TIMEOUT),
    )
    stack = LocalStack(tmp_path / "stack", env=env)
    try:
        yield stack.start()
    finally:
        stack.close()


def started(step: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda ev: any(d["step"] == step for d in of_type(ev, "migration.step_started"))


def test_every_vm_completes_once_through_long_outages(stack: LocalStack, ledger: Path) -> None:
    # Given three raw-copy VMs and an audit-stream subscriber
    fleet = chaos.make_fleet(stack, 3, size_mib=64, in_flight=3)
    recorder: EventRecorder = stack.record_events("events-1")
    time.sleep(2)
    start_migration(stack, fleet.plan, "m-ledger")
    # When the controller is down longer than the dedupe window
    stack.wait_for("a copy dispatched", started("CopyDisks"), recorder, timeout=300)
    stack.kill("migration-controller")
    time.sleep(WINDOW * 2)
    stack.restart("migration-controller")
    # And the nats-server is down longer than the publish timeout
    stack.wait_for("a copy done", lambda ev: of_type(ev, "volume.disks_copied"), recorder, 300)
    stack.kill_nats()
    time.sleep(PUBLISH_TIMEOUT * 3)
    stack.restart_nats()
    recorder.stop()
    recorder = stack.record_events("events-2")  # from the start of the stream
    # And the vm-service dies as CreateVM is dispatched
    stack.wait_for("CreateVM dispatched", started("CreateVM"), recorder, timeout=300)
    stack.kill("vm-service")
    time.sleep(1.0)
    stack.restart("vm-service")
    # Then the migration ends with every VM migrated
    done = stack.wait_for("the end", lambda ev: finished(ev, "m-ledger"), recorder, 600)
    assert (done["succeeded"], done["failed"], done["canceled"]) == (3, 0, 0), done
    # And each VM completed exactly once, each effect once, bytes equal, nothing left over
    audit = chaos.audit(stack, fleet, "m-ledger", ledger)
    print(audit)
    assert audit.problems == []
    assert audit.completed == 3
    lines = list(read_ledger(ledger))
    assert {line["by"] for line in lines} >= {"migration-controller", "volume-service"}
