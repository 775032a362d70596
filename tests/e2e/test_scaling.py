"""Scaling out: two conversion-service replicas convert two VMs at the same time.

Each replica converts one guest at a time (its worker concurrency is 1), so two
ConvertGuest steps running at once, seen in the events' timestamps, can only
come from the two replicas sharing the work queue. Once the overlap is seen the
migration is canceled: the point is the overlap, not four more conversions.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.testing.migration import (
    apply_yaml,
    finished,
    guest_ova,
    of_type,
    ova_objects,
    place_ovas,
    start_migration,
)
from ferry.testing.stack import LocalStack, v2v_processes

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
NAMES = ["vm-1", "vm-2", "vm-3", "vm-4"]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[LocalStack]:
    # (the conversion-service's default worker concurrency is 1 per replica)
    stack = LocalStack(tmp_path / "stack", replicas={"conversion-service": 2})
    try:
        yield stack.start()
    finally:
        stack.close()


def converting(events: list[dict[str, Any]]) -> dict[str, tuple[str, str | None, int]]:
    """VM → (first virt-v2v stage's time, ConvertGuest's end time, stages reported so far)."""
    spans: dict[str, tuple[str, str | None, int]] = {}
    for event in events:
        data, kind = event["data"], event["type"]
        vm = data.get("vm", "")
        if kind == "conversion.progress.v1":
            start, end, count = spans.get(vm, (event["time"], None, 0))
            spans[vm] = (start, end, count + (end is None))
        elif (
            kind in ("migration.step_completed.v1", "migration.step_failed.v1")
            and data.get("step") == "ConvertGuest"
            and vm in spans
            and spans[vm][1] is None
        ):
            spans[vm] = (spans[vm][0], event["time"], spans[vm][2])
    return spans


def overlapping(events: list[dict[str, Any]]) -> list[str]:
    """Two VMs whose virt-v2v runs were both under way at one moment (by the timestamps),
    each having reported at least two stages (it got past starting up)."""
    spans = {vm: span for vm, span in converting(events).items() if span[2] >= 2}
    for a, (a_start, a_end, _) in spans.items():
        for b, (b_start, _, _) in spans.items():
            if a != b and a_start <= b_start and (a_end is None or b_start < a_end):
                return [a, b]
    return []


def test_two_replicas_convert_two_vms_at_once(stack: LocalStack) -> None:
    # Given four VMs and two conversion-service replicas, each converting one at a time
    guest = guest_ova(REPO)
    ova_dir = place_ovas(stack, Path(guest["ova"]), NAMES)
    vm_ids = [f"{n}/ferry-test-guest" for n in NAMES]
    apply_yaml(stack, ova_objects(ova_dir, vm_ids, plan="wide", max_in_flight=4, power="off"))
    recorder = stack.record_events()
    time.sleep(2)

    # When the four are migrated together
    start_migration(stack, "wide", "m-wide")

    # Then two conversions run at the same time
    pair = stack.wait_for("two conversions at once", overlapping, recorder, timeout=600)
    assert len(set(pair)) == 2
    # each on its own replica: both replica logs name a VM they converted
    logs = [stack.service("conversion-service", i).log.read_text() for i in (0, 1)]
    assert all(any(vm in log for vm in pair) for log in logs), "one replica did both"

    # And canceling the migration stops them all
    assert stack.ferry("cancel", "m-wide").returncode == 0
    done = stack.wait_for("the end", lambda ev: finished(ev, "m-wide"), recorder, timeout=300)
    assert done["canceled"] == 4
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and v2v_processes(str(stack.root)):
        time.sleep(1)
    assert v2v_processes(str(stack.root)) == []
    assert not of_type(recorder.events(), "migration.vm_completed")
