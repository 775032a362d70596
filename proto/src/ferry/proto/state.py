"""One VM's migration state, as stored in the ``ferry-vms`` bucket.

The controller is the one writer; the command line (``ferry describe``,
``ferry migrate --wait``) and anyone auditing a migration read it. The shape
lives here so both sides decode the same struct instead of one writing a struct
and the other poking at a dict.

:class:`VmView` is what a reader shows: identity, status, steps, disks, errors.
:class:`VmState` adds what the controller needs to carry the VM to its end
(the itinerary's cursor, the inventory snapshot, the resolved maps, the volumes
the services reported), so that a restarted controller resumes from it without
asking anyone. A reader decodes a stored state as a :class:`VmView`: unknown
fields are ignored, so a newer controller's additions never break an older
reader. Field names are the stored JSON names: never rename one.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from ferry.proto.inventory import Inspection, NetworkTarget, Vm, Volume, VolumeTarget
from ferry.proto.phases import Flow, StepStatus, VmStatus
from ferry.proto.volume import SourceRef


def now_iso(t: float) -> str:
    """A time as the state stores it (RFC 3339, UTC, milliseconds)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class StepState(msgspec.Struct, kw_only=True):
    name: str
    service: str
    status: StepStatus = StepStatus.PENDING
    attempt: int = 0  # attempts started so far
    started: str = ""
    ended: str = ""
    reason: str = ""
    retry_at: float = 0.0  # epoch seconds; a failed attempt waits for this before the next
    wait_until: float = 0.0  # CopyingPaused: when to look at the cutover again
    runs: int = 0  # completed runs (warm precopy loops run some steps more than once)
    instant: bool = (
        False  # nothing to do but record it: completes in the transition that reaches it
    )


class DiskState(msgspec.Struct, kw_only=True):
    id: str
    name: str
    total: int
    done: int = 0
    checksum: str = ""


class VmError(msgspec.Struct, kw_only=True):
    step: str
    attempt: int
    reason: str
    time: str
    permanent: bool = False


class CopyRound(msgspec.Struct, kw_only=True):
    """One warm-migration copy round as people are shown it (``ferry describe``)."""

    precopy: int  # 0 = the first, full round
    final: bool = False  # the last delta, after the source was powered off
    changed: int = 0  # bytes the source reported changed (all allocated bytes in round 0)
    copied: int = 0  # bytes written onto the target
    seconds: float = 0.0


class VmView(msgspec.Struct, kw_only=True):
    """The part of a VM's state that people are shown."""

    # identity
    plan: str
    migration: str
    vm: str  # provider id
    name: str
    target_name: str
    namespace: str
    seq: int = 0  # order within the migration (queue order)
    host: str = ""
    # where it is
    flow: Flow
    warm: bool = False
    remote: bool = False
    steps: list[StepState] = msgspec.field(default_factory=list)
    status: VmStatus = VmStatus.QUEUED
    phase: str = "Pending"
    disks: list[DiskState] = msgspec.field(default_factory=list)
    source_power: str = ""  # stored by StorePowerState: on | off | unknown
    # history
    errors: list[VmError] = msgspec.field(default_factory=list)
    created: str = ""
    started: str = ""
    ended: str = ""
    power_restored: bool = False
    cancel_reason: str = ""
    rounds: list[CopyRound] = msgspec.field(default_factory=list)  # warm copy rounds
    notes: list[str] = msgspec.field(default_factory=list)  # why the itinerary is this one

    def step(self, name: str) -> StepState | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def done_bytes(self) -> int:
        return sum(d.done for d in self.disks)

    @property
    def total_bytes(self) -> int:
        return sum(d.total for d in self.disks)

    @property
    def last_error(self) -> str:
        return self.errors[-1].reason if self.errors else ""


class VmState(VmView, kw_only=True):
    """The whole stored state: the view plus what the controller's steps need and produce."""

    cursor: int = 0
    # what the steps need
    provider: SourceRef
    inventory: Vm
    volume_targets: list[VolumeTarget] = msgspec.field(default_factory=list)
    network_targets: list[NetworkTarget] = msgspec.field(default_factory=list)
    hooks: dict[str, str] = msgspec.field(default_factory=dict)  # PreHook/PostHook -> Hook name
    run_target: bool = False  # power the target VM on at the end
    cutover: float = 0.0  # epoch seconds; 0 = not set
    precopy_interval: float = 3600.0
    max_precopies: int = 50
    max_attempts: int = 3
    retry_base: float = 2.0  # seconds before the 2nd attempt; doubles per attempt
    # what the steps produced
    powered_off: bool = False
    precopy: int = 0
    checkpoint: str = ""  # the source checkpoint the next warm round counts changes from
    volumes: list[Volume] = msgspec.field(default_factory=list)
    inspection: Inspection | None = None
    finalized: bool = False  # the end's side effects (power, clean-up) were carried out

    @property
    def current(self) -> StepState | None:
        return self.steps[self.cursor] if self.cursor < len(self.steps) else None
