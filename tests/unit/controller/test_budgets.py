"""The budgets' ledger: which budget a VM touches, when it has room, and what it gives back."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest

from ferry.migration_controller.budgets import Ledger
from ferry.migration_controller.scheduler import WINDOW_RECHECK, Scheduler
from ferry.proto import objects
from ferry.proto.budget import Budget, Window
from ferry.proto.state import VmState

from .conftest import inventory_vm, make_state

NOON = datetime(2026, 12, 6, 12, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 12, 6, 23, 30, tzinfo=UTC).timestamp()


def budget(name: str, **spec: Any) -> Budget:
    doc = {"apiVersion": objects.API_VERSION, "kind": "Budget", "metadata": {"name": name}}
    found = objects.parse_object({**doc, "spec": spec})
    assert isinstance(found, Budget)
    return found


def vm(docs: dict[str, objects.FerryObjectBase], n: int, host: str = "esx1") -> VmState:
    return make_state(docs, inventory_vm(f"vm-{n}", f"web{n}", host=host))


def test_a_per_host_budget_counts_each_host_apart(docs: dict[str, Any]) -> None:
    # Given "one VM per host" (no names: every host on its own)
    ledger = Ledger()
    ledger.set_budgets([budget("per-host", scope="host", maxVms=1)])
    # When a VM on esx1 runs
    ledger.take("a", vm(docs, 1))
    # Then a second on esx1 is held, naming the budget and host, and one on esx2 is not
    assert ledger.hold(vm(docs, 2), NOON) == "Budget per-host (host esx1): 1/1 VMs in flight"
    assert ledger.hold(vm(docs, 3, host="esx2"), NOON) is None
    # And giving the first back makes room again
    ledger.give("a")
    assert ledger.hold(vm(docs, 2), NOON) is None


def test_disks_per_datastore_and_a_big_vm_alone(docs: dict[str, Any]) -> None:
    # Given three disks in flight per datastore, and VMs of two disks each
    ledger = Ledger()
    ledger.set_budgets([budget("ds", scope="datastore", names=["datastore1"], maxDisks=3)])
    # Then the first starts (alone it may exceed nothing), the second does not fit
    assert ledger.hold(vm(docs, 1), NOON) is None
    ledger.take("a", vm(docs, 1))
    assert ledger.hold(vm(docs, 2), NOON) == "Budget ds (datastore datastore1): 2/3 disks in flight"
    # And a VM with more disks than the cap still starts when the datastore is idle
    small = Ledger()
    small.set_budgets([budget("ds", scope="datastore", maxDisks=1)])
    assert small.hold(vm(docs, 1), NOON) is None


def test_a_window_holds_starts_outside_it(docs: dict[str, Any]) -> None:
    # Given a budget open from 22:00 to 04:00 UTC
    ledger = Ledger()
    ledger.set_budgets(
        [budget("night", scope="global", maxVms=10, window={"start": "22:00", "end": "04:00"})]
    )
    # Then at noon nothing starts, at 23:30 it does
    assert ledger.closed_for_all(NOON) == "Budget night: outside its window 22:00:00-04:00:00 UTC"
    assert ledger.hold(vm(docs, 1), MIDNIGHT) is None


def test_a_changed_budget_gives_back_what_was_taken(docs: dict[str, Any]) -> None:
    # Given a VM charged under a budget that is then removed
    ledger = Ledger()
    ledger.set_budgets([budget("all", scope="global", maxVms=1)])
    ledger.take("a", vm(docs, 1))
    ledger.set_budgets([])
    ledger.give("a")
    # Then re-adding it finds nothing in flight
    ledger.set_budgets([budget("all", scope="global", maxVms=1)])
    assert ledger.in_flight("all") == (0, 0)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"scope": "host"}, "caps something"),
        ({"scope": "global", "names": ["x"], "maxVms": 1}, "takes no names"),
        ({"scope": "rack", "maxVms": 1}, "scope"),
    ],
)
def test_a_budget_that_says_nothing_is_refused(spec: dict[str, Any], problem: str) -> None:
    with pytest.raises(objects.ObjectError, match=problem):
        budget("bad", **spec)


def test_a_window_says_when_it_next_opens() -> None:
    # Given a window over midnight (22:00 → 04:00 UTC)
    night = Window.model_validate({"start": "22:00", "end": "04:00"})
    noon = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
    # Then at noon it opens at 22:00 the same day, at 23:30 it is open, at 04:00 it shut
    assert night.next_open(noon) == datetime(2026, 12, 6, 22, 0, tzinfo=UTC)
    late = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)
    assert night.next_open(late) == late
    # And a day window missed today opens tomorrow
    day = Window.model_validate({"start": "08:00", "end": "10:00"})
    assert day.next_open(noon) == datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_a_running_vm_is_held_by_a_closed_budget_or_plan_window(docs: dict[str, Any]) -> None:
    # Given a VM on esx1 under a host budget open only at night
    state = vm(docs, 1)
    sched = Scheduler(lambda key: state, cast(Any, None))
    night = {"start": "22:00", "end": "04:00"}
    sched.ledger.set_budgets([budget("esx1-night", scope="host", maxVms=5, window=night)])
    # Then at noon it waits, until 22:00 at the latest, naming the budget
    until, why = sched.closed(state, NOON) or (0.0, "")
    assert until == min(NOON + WINDOW_RECHECK, NOON + 10 * 3600)
    assert why == "Budget esx1-night (host esx1): outside its window 22:00:00-04:00:00 UTC"
    # And at 23:30 nothing holds it
    assert sched.closed(state, MIDNIGHT) is None
