"""One VM's migration state, as stored in the ``ferry-vms`` bucket.

Everything the controller needs to carry a VM to its end is in this record —
the itinerary, each step's status and attempts, the inventory snapshot taken at
start, the resolved maps, the volumes the services reported — so that a
restarted controller resumes from it without asking anyone. Writes are
compare-and-set on the entry's revision.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from ferry.migration_controller.phases import Flow, StepStatus, VmStatus
from ferry.proto.inventory import Inspection, NetworkTarget, Vm, Volume, VolumeTarget
from ferry.proto.volume import SourceRef


def now_iso(t: float) -> str:
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


class VmState(msgspec.Struct, kw_only=True):
    # identity
    plan: str
    migration: str
    vm: str  # provider id
    name: str
    target_name: str
    namespace: str
    seq: int = 0  # order within the migration (queue order)
    host: str = ""
    # itinerary
    flow: Flow
    warm: bool = False
    remote: bool = False
    steps: list[StepState] = msgspec.field(default_factory=list)
    cursor: int = 0
    status: VmStatus = VmStatus.QUEUED
    phase: str = "Pending"
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
    source_power: str = ""  # stored by StorePowerState: on | off | unknown
    powered_off: bool = False
    precopy: int = 0
    volumes: list[Volume] = msgspec.field(default_factory=list)
    inspection: Inspection | None = None
    disks: list[DiskState] = msgspec.field(default_factory=list)
    # history
    errors: list[VmError] = msgspec.field(default_factory=list)
    created: str = ""
    started: str = ""
    ended: str = ""
    power_restored: bool = False
    cancel_reason: str = ""
    finalized: bool = False  # the end's side effects (power, clean-up) were carried out

    def step(self, name: str) -> StepState | None:
        return next((s for s in self.steps if s.name == name), None)

    @property
    def current(self) -> StepState | None:
        return self.steps[self.cursor] if self.cursor < len(self.steps) else None

    @property
    def done_bytes(self) -> int:
        return sum(d.done for d in self.disks)

    @property
    def total_bytes(self) -> int:
        return sum(d.total for d in self.disks)

    @property
    def last_error(self) -> str:
        return self.errors[-1].reason if self.errors else ""
