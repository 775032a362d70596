"""What a plan is expected to take, and the inputs that produced the number.

An estimate crosses processes: ``ferry migrate`` and the console record it on the
Migration they start (the ``ferry.io/estimate`` annotation), and ``ferry describe
migration`` reads it back to compare it with what happened. Every number names
its inputs and whether each was measured on this source/target pair or assumed,
so a person can judge how far to trust it.
"""

from __future__ import annotations

import msgspec

ANNOTATION = "ferry.io/estimate"


class Input(msgspec.Struct, frozen=True, kw_only=True):
    """One number an estimate rests on."""

    name: str  # throughput, conversion, overhead, final_delta, boot, concurrency
    value: float
    unit: str  # B/s, s, fraction, VMs
    measured: bool  # False: an assumed default, stated as such
    basis: str = ""  # "3 VMs on ova-lab@host1 -> demo" or why it is assumed


class VmEstimate(msgspec.Struct, frozen=True, kw_only=True):
    vm: str  # provider id or the plan's key when inventory is not known
    name: str
    bytes: int
    cold_duration: float  # seconds
    cold_downtime: float
    warm_duration: float
    warm_downtime: float


class PlanEstimate(msgspec.Struct, frozen=True, kw_only=True):
    plan: str
    warm: bool
    source: str  # provider[@host…]
    target: str  # namespace
    vms: list[VmEstimate] = msgspec.field(default_factory=list)
    duration: float = 0.0  # the whole plan under its concurrency cap, in the plan's mode
    inputs: list[Input] = msgspec.field(default_factory=list)
    made: str = ""  # RFC 3339, when the estimate was made

    def vm(self, key: str) -> VmEstimate | None:
        return next((v for v in self.vms if key in (v.vm, v.name)), None)


class Accuracy(msgspec.Struct, frozen=True, kw_only=True):
    """A finished VM's estimate against what happened: error = (actual - estimated) / estimated."""

    vm: str
    estimated: float
    actual: float

    @property
    def error(self) -> float:
        return (self.actual - self.estimated) / self.estimated if self.estimated else 0.0
