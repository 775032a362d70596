"""What a plan is expected to take, and the inputs that produced the number.

An estimate crosses processes: the controller records it on every Migration it
admits (``status.estimate``, whichever way the Migration was started: ``ferry
migrate``, ``ferry apply``, the console, a custom resource), and ``ferry describe
migration`` and the console read it back to compare it with what happened. Every number names
its inputs and whether each was measured on this source/target pair or assumed,
so a person can judge how far to trust it.
"""

from __future__ import annotations

import msgspec

ANNOTATION = "ferry.io/estimate"  # where ``ferry migrate`` recorded it before status.estimate


class Input(msgspec.Struct, frozen=True, kw_only=True):
    """One number an estimate rests on."""

    name: str  # throughput, conversion, overhead, final_delta, boot, concurrency
    value: float
    unit: str  # B/s, s, fraction, VMs
    measured: bool  # False: an assumed default, stated as such
    basis: str = ""  # "3 VMs on ova-lab@host1 -> demo" or why it is assumed
    probed: bool = False  # measured by a short read of the source now, not by past migrations

    @property
    def provenance(self) -> str:
        """How the number was come by, as people are shown it: measured, probed or assumed."""
        return "probed" if self.probed else "measured" if self.measured else "assumed"


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
    """A finished VM's estimate against what happened: error = (actual - estimated) / actual.

    Relative to what happened, as the target reads ("within ±30 % of the actual
    duration"): -0.5 is an estimate half again too long, +0.5 one half too short."""

    vm: str
    estimated: float
    actual: float

    @property
    def error(self) -> float:
        return (self.actual - self.estimated) / self.actual if self.actual else 0.0
