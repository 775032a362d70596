"""The migration-controller's commands and events: the life of a migration per VM."""

from __future__ import annotations

import msgspec

from ferry.proto.base import Command, Event, Failed, StepEvent
from ferry.proto.inventory import Vm


class StartMigration(Command, frozen=True, kw_only=True, tag="migration.start.v1"):
    """Start (or re-run) a Migration of a Plan; ``vm`` is ``"*"`` for the whole plan.

    The Plan and Migration objects themselves are in the objects bucket; this
    command only names them, so it never carries anything secret.
    """

    cutover: str | None = None  # RFC 3339 time for warm migrations


class CancelMigration(Command, frozen=True, kw_only=True, tag="migration.cancel.v1"):
    """Cancel one VM (``vm``) or the whole migration (``vm == "*"``)."""

    reason: str = "canceled by user"


class Cutover(Command, frozen=True, kw_only=True, tag="migration.cutover.v1"):
    """Set or move the cutover time of a warm migration."""

    cutover: str


class MigrationStarted(Event, frozen=True, kw_only=True, tag="migration.started.v1"):
    vms: list[str] = msgspec.field(default_factory=list)
    skipped: list[str] = msgspec.field(default_factory=list)  # already migrated
    warnings: dict[str, list[str]] = msgspec.field(default_factory=dict)  # preflight, per VM


class MigrationRejected(Event, frozen=True, kw_only=True, tag="migration.rejected.v1"):
    """Preflight validation failed: nothing ran. One reason per offending VM."""

    reasons: dict[str, list[str]] = msgspec.field(default_factory=dict)


class VmStarted(Event, frozen=True, kw_only=True, tag="migration.vm_started.v1"):
    itinerary: list[str] = msgspec.field(default_factory=list)
    flow: str = ""


class StepStarted(Event, frozen=True, kw_only=True, tag="migration.step_started.v1"):
    step: str
    service: str
    attempt: int = 1


class StepCompleted(Event, frozen=True, kw_only=True, tag="migration.step_completed.v1"):
    step: str
    attempt: int = 1
    seconds: float = 0.0


class StepFailed(Event, frozen=True, kw_only=True, tag="migration.step_failed.v1"):
    step: str
    attempt: int = 1
    reason: str
    will_retry: bool = False


class Progress(Event, frozen=True, kw_only=True, tag="migration.progress.v1"):
    """Per-VM progress: the current step and bytes done over total across disks."""

    step: str
    done: int
    total: int
    disks: dict[str, int] = msgspec.field(default_factory=dict)


class VmCompleted(Event, frozen=True, kw_only=True, tag="migration.vm_completed.v1"):
    seconds: float = 0.0


class VmFailed(Event, frozen=True, kw_only=True, tag="migration.vm_failed.v1"):
    step: str
    reason: str
    power_restored: bool = False


class VmCanceled(StepEvent, frozen=True, kw_only=True, tag="migration.vm_canceled.v1"):
    power_restored: bool = False


class MigrationCanceled(Event, frozen=True, kw_only=True, tag="migration.cancelled.v1"):
    reason: str = ""


class MigrationCompleted(Event, frozen=True, kw_only=True, tag="migration.completed.v1"):
    """Every VM reached an end state; the counts say how it went."""

    succeeded: int = 0
    failed: int = 0
    canceled: int = 0


class SourcePowerStored(Event, frozen=True, kw_only=True, tag="migration.power_stored.v1"):
    state: str


class SourcePoweredOff(Event, frozen=True, kw_only=True, tag="migration.powered_off.v1"):
    forced: bool = False


class SourcePowerRestored(Event, frozen=True, kw_only=True, tag="migration.power_restored.v1"):
    state: str


class ControllerFailed(Failed, frozen=True, kw_only=True, tag="migration.failed.v1"):
    pass


class InventoryRead(Event, frozen=True, kw_only=True, tag="migration.inventory_read.v1"):
    """What a source Provider held when the controller last read it: the console's live
    inventory. ``vm`` is the Provider's name, ``migration`` is ``*``. Published every
    ``inventory_refresh_seconds``; an unchanged inventory is the same message id, so the
    audit stream keeps one copy per duplicate window."""

    provider: str
    source_type: str = ""
    vms: list[Vm] = msgspec.field(default_factory=list)
    left_out: int = 0  # VMs beyond the event's cap, not listed
    error: str = ""  # why the source could not be read (then ``vms`` is empty)
