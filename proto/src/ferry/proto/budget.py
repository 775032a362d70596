"""Budget: what a wave may take from a shared resource, across every plan at once.

A Plan's ``maxInFlight`` says how hard one plan may push; it cannot say that two
plans on the same ESXi host must share that host's network, or that a datastore
serves only so many readers. A Budget names a *scope* (every VM, a source host, a
source datastore, a target storage class) and caps what all plans together may
have in flight there: VMs, disks, and bandwidth (MiB/s, enforced where bytes move
by a rate shared between the data movers' replicas).

``names`` picks which hosts (datastores, classes) the budget covers; empty means
each one of the scope *separately* (``scope: host, maxVms: 4`` is "4 per host").
A VM starts only when every budget it touches has room.

``window`` limits when a budget lets VMs work (a maintenance window, in UTC): a
VM running when it closes finishes its current step and waits at the next one;
the ones queued wait for it to open (:mod:`ferry.proto.windows`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from ferry.proto import objects
from ferry.proto.windows import Window

__all__ = ["Budget", "BudgetScope", "BudgetSpec", "BudgetStatus", "Window"]


class BudgetScope(StrEnum):
    GLOBAL = "global"
    HOST = "host"
    DATASTORE = "datastore"
    STORAGE_CLASS = "storageClass"


class BudgetSpec(objects._Model):
    scope: BudgetScope
    names: list[str] = Field(default_factory=list)
    maxVms: int | None = Field(default=None, ge=1)
    maxDisks: int | None = Field(default=None, ge=1)
    bandwidthMiBps: float | None = Field(default=None, gt=0)
    window: Window | None = None
    description: str = ""

    @model_validator(mode="after")
    def _caps_something(self) -> BudgetSpec:
        if self.maxVms is None and self.maxDisks is None and self.bandwidthMiBps is None:
            raise ValueError("a Budget caps something: maxVms, maxDisks or bandwidthMiBps")
        if self.scope is BudgetScope.GLOBAL and self.names:
            raise ValueError("a global Budget covers every VM: it takes no names")
        return self


class BudgetStatus(objects._Model):
    phase: str = ""
    conditions: list[objects.Condition] = Field(default_factory=list)


@objects.register
class Budget(objects.FerryObjectBase):
    kind: Literal["Budget"] = "Budget"
    spec: BudgetSpec
    status: BudgetStatus = Field(default_factory=BudgetStatus)

    KIND: ClassVar[str] = "Budget"
    PLURAL: ClassVar[str] = "budgets"

    def covers(self, value: str) -> bool:
        """Whether this budget counts a VM whose scope value (host, datastore…) is ``value``."""
        if self.spec.scope is BudgetScope.GLOBAL:
            return True
        return bool(value) and (not self.spec.names or value in self.spec.names)
