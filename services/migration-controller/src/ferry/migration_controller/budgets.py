"""What every Budget has lent to the VMs in flight, and which budget holds a queued VM.

The scheduler asks :meth:`Ledger.hold` before it starts a VM: the first budget
the VM touches that has no room is the answer (and what ``ferry describe plan``
shows), ``None`` means it may start. A started VM's charge is remembered as it
was taken, so that giving it back frees exactly that even when the Budget
objects changed in between (a budget removed, a cap lowered).

Like the scheduler's other tables, the ledger is derived: on start-up every
running VM is charged again. Bandwidth is not counted here: the data movers
share it while bytes move; :meth:`Ledger.bandwidth` names what a VM's copy
moves under, and its CopyDisks carries that to them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from ferry.bus.rate import account
from ferry.proto.budget import Budget, BudgetScope, Window
from ferry.proto.state import VmState
from ferry.proto.volume import Bandwidth

MIB = 1 << 20
Account = tuple[str, str]  # (budget name, the host / datastore / class it counts; "" if global)


@dataclass(frozen=True, slots=True)
class Charge:
    account: Account
    disks: int


def scope_values(state: VmState, scope: BudgetScope) -> Counter[str]:
    """The values of ``scope`` a VM touches, each with how many of its disks are there."""
    disks = len(state.inventory.disks)
    if scope is BudgetScope.GLOBAL:
        return Counter({"": disks})
    if scope is BudgetScope.HOST:
        return Counter({state.host: disks}) if state.host else Counter()
    if scope is BudgetScope.DATASTORE:
        return Counter(d.storage for d in state.inventory.disks if d.storage)
    return Counter(t.storage_class for t in state.volume_targets if t.storage_class)


def describe_account(budget: Budget, value: str) -> str:
    where = f" ({budget.spec.scope} {value})" if value else ""
    return f"Budget {budget.name}{where}"


class Ledger:
    def __init__(self) -> None:
        self._budgets: dict[str, Budget] = {}
        self._vms: Counter[Account] = Counter()
        self._disks: Counter[Account] = Counter()
        self._charges: dict[str, list[Charge]] = {}

    def set_budgets(self, budgets: Iterable[Budget]) -> None:
        self._budgets = {b.name: b for b in budgets}

    @property
    def budgets(self) -> list[Budget]:
        return list(self._budgets.values())

    def in_flight(self, name: str, value: str = "") -> tuple[int, int]:
        """(VMs, disks) a budget has lent for ``value``."""
        return self._vms[(name, value)], self._disks[(name, value)]

    def _touches(self, state: VmState) -> list[tuple[Budget, Charge]]:
        out = []
        for budget in self._budgets.values():
            for value, disks in scope_values(state, budget.spec.scope).items():
                if budget.covers(value):
                    out.append((budget, Charge((budget.name, value), disks)))
        return out

    def bandwidth(self, state: VmState) -> list[Bandwidth]:
        """The bandwidth budgets a VM's copy moves under, each with its shared account."""
        return [
            Bandwidth(
                budget=budget.name,
                account=account(budget.name, charge.account[1]),
                bytes_per_second=budget.spec.bandwidthMiBps * MIB,
            )
            for budget, charge in self._touches(state)
            if budget.spec.bandwidthMiBps is not None
        ]

    def closed_for_all(self, now: float) -> str | None:
        """A global budget that admits no VM at all now (full, or outside its window)."""
        for budget in self._budgets.values():
            if budget.spec.scope is BudgetScope.GLOBAL:
                why = self._no_room(budget, Charge((budget.name, ""), 0), now)
                if why:
                    return why
        return None

    def hold(self, state: VmState, now: float) -> str | None:
        """Why this VM may not start now (the first budget without room), else ``None``."""
        for budget, charge in self._touches(state):
            why = self._no_room(budget, charge, now)
            if why:
                return why
        return None

    def _no_room(self, budget: Budget, charge: Charge, now: float) -> str | None:
        spec, value = budget.spec, charge.account[1]
        label = describe_account(budget, value)
        if spec.window is not None and not spec.window.open_at(datetime.fromtimestamp(now, UTC)):
            return f"{label}: outside its window {spec.window}"
        vms = self._vms[charge.account]
        if spec.maxVms is not None and vms >= spec.maxVms:
            return f"{label}: {vms}/{spec.maxVms} VMs in flight"
        disks = self._disks[charge.account]
        # A VM with more disks than the cap may still start alone: else it never would.
        if spec.maxDisks is not None and disks and disks + charge.disks > spec.maxDisks:
            return f"{label}: {disks}/{spec.maxDisks} disks in flight"
        return None

    def windows(self, state: VmState) -> list[tuple[str, Window]]:
        """The windows of the budgets a VM touches, each with the budget's label."""
        return [
            (describe_account(budget, charge.account[1]), budget.spec.window)
            for budget, charge in self._touches(state)
            if budget.spec.window is not None
        ]

    def take(self, key: str, state: VmState) -> None:
        if key in self._charges:
            return
        charges = [charge for _, charge in self._touches(state)]
        for charge in charges:
            self._vms[charge.account] += 1
            self._disks[charge.account] += charge.disks
        self._charges[key] = charges

    def give(self, key: str) -> None:
        for charge in self._charges.pop(key, []):
            self._vms[charge.account] -= 1
            self._disks[charge.account] -= charge.disks
