"""Who sends each message, who handles it, and what it changes.

The structs say what a message *is*; this table says where it *goes*. It is data
so that the message table in ``docs/ARCHITECTURE.md`` is generated from it
(``python -m ferry.proto.docgen``), and so that a test can hold it against the
routers the services really build: a handler registered for a message the table
does not name (or the reverse) fails the test, so the table cannot drift.

Actors are the four services, the ``ferry`` command line, and the bus router of
a service, which publishes that service's ``Failed`` event when a handler gives
up; nobody handles an event only the audit stream keeps (the CLI reads that
stream as a whole: ``ferry events``, ``ferry migrate --wait``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from ferry.proto import conversion, migration, registry, vm, volume
from ferry.proto.base import Message


class Actor(StrEnum):
    """Who publishes or consumes a message (process names, as in logs and metrics)."""

    CLI = "ferry CLI"
    CONTROLLER = "migration-controller"
    VOLUME = "volume-service"
    CONVERSION = "conversion-service"
    VM = "vm-service"
    ROUTER = "the service's bus router"


@dataclass(frozen=True)
class Route:
    message: type[Message]
    sent_by: tuple[Actor, ...]
    handled_by: tuple[Actor, ...]
    effect: str


C, V, K, M, CLI, R = (
    Actor.CONTROLLER,
    Actor.VOLUME,
    Actor.CONVERSION,
    Actor.VM,
    Actor.CLI,
    Actor.ROUTER,
)

ROUTES: tuple[Route, ...] = (
    # -- the migration-controller ----------------------------------------------------
    Route(migration.StartMigration, (CLI,), (C,),
          "preflight; per-VM state created and queued, or the Migration rejected"),
    Route(migration.CancelMigration, (CLI,), (C,),
          "VM(s) canceled: running work stopped, source power restored, volumes cleaned"),
    Route(migration.Cutover, (CLI,), (C,), "warm migration: cutover time set or moved"),
    Route(migration.MigrationStarted, (C,), (), "audit: the VMs that will run and those skipped"),
    Route(migration.MigrationRejected, (C,), (), "audit: preflight reasons per VM; nothing ran"),
    Route(migration.VmStarted, (C,), (), "audit: the VM's itinerary and flow"),
    Route(migration.StepStarted, (C,), (), "audit: a step (attempt N) began"),
    Route(migration.StepCompleted, (C,), (), "audit: a step finished, with its duration"),
    Route(migration.StepFailed, (C,), (), "audit: a step failed; whether it will be retried"),
    Route(migration.Progress, (C,), (), "audit: bytes done over total for the VM's disks"),
    Route(migration.VmCompleted, (C,), (), "audit: the VM migrated"),
    Route(migration.VmFailed, (C,), (), "audit: the VM failed at a step; power restored?"),
    Route(migration.VmCanceled, (C,), (), "audit: the VM was canceled"),
    Route(migration.MigrationCanceled, (C,), (), "audit: the whole migration was canceled"),
    Route(migration.MigrationCompleted, (C,), (), "audit: every VM ended; the counts"),
    Route(migration.SourcePowerStored, (C,), (), "audit: the source's power state, kept"),
    Route(migration.SourcePoweredOff, (C,), (), "audit: the source was shut down (or forced)"),
    Route(migration.SourcePowerRestored, (C,), (), "audit: the source's power state restored"),
    Route(migration.ControllerFailed, (R,), (), "audit: a controller command was given up"),
    Route(migration.InventoryRead, (C,), (), "audit: a source's VMs, read periodically"),
    # -- the volume-service ----------------------------------------------------------
    Route(volume.CreateVolumes, (C,), (V,),
          "one target volume per disk (importer / blank DataVolume, or PVC + populator)"),
    Route(volume.VolumesCreated, (V,), (C,), "CreateDataVolumes done: the VM advances"),
    Route(volume.AllocateDisks, (C,), (V,), "pvcinit: every volume of the VM bound together"),
    Route(volume.DisksAllocated, (V,), (C,), "AllocateDisks done: the VM advances"),
    Route(volume.CopyDisks, (C,), (V,),
          "importer or populator transfer of every disk (a warm precopy round, or the last)"),
    Route(volume.DiskProgress, (V,), (C,), "the VM's per-disk byte progress"),
    Route(volume.DisksCopied, (V,), (C,), "CopyDisks done, with checksums: the VM advances"),
    Route(volume.CleanupVolumes, (C,), (V,),
          "temporary volumes removed; on failure or cancel every volume of the VM"),
    Route(volume.VolumesCleaned, (V,), (), "audit: the volumes removed"),
    Route(volume.VolumeFailed, (R,), (C,), "the running step fails (retried unless permanent)"),
    # -- the conversion-service ------------------------------------------------------
    Route(conversion.ConvertGuest, (C,), (K,),
          "virt-v2v: full conversion into the bound volumes, or in place on copied ones"),
    Route(conversion.ConversionProgress, (K,), (C,),
          "the VM's progress (a full conversion's disk copy counts as its bytes)"),
    Route(conversion.GuestConverted, (K,), (C,), "ConvertGuest done, with the inspection"),
    Route(conversion.ConversionFailed, (R,), (C,),
          "the running step fails (retried unless permanent)"),
    # -- the vm-service --------------------------------------------------------------
    Route(vm.CreateVm, (C,), (M,), "the KubeVirt VirtualMachine created (stopped or running)"),
    Route(vm.VmCreated, (M,), (C,), "CreateVM done: the VM advances"),
    Route(vm.PowerOn, (C,), (M,), "the VirtualMachine started and watched until it boots"),
    Route(vm.VmStarting, (M,), (), "audit: the VirtualMachine is starting (its console)"),
    Route(vm.VmRunning, (M,), (C,), "PowerOn done: the VM reached Running"),
    Route(vm.PowerOff, (), (M,), "the VirtualMachine stopped (nothing sends it yet)"),
    Route(vm.VmStopped, (M,), (), "audit: the VirtualMachine stopped"),
    Route(vm.DeleteVm, (C,), (M,),
          "clean-up of a failed or canceled VM: its VirtualMachine deleted"),
    Route(vm.VmDeleted, (M,), (), "audit: the VirtualMachine deleted"),
    Route(vm.VmServiceFailed, (R,), (C,), "the running step fails (retried unless permanent)"),
)  # fmt: skip

BY_TYPE: dict[str, Route] = {r.message.type_name(): r for r in ROUTES}


def handled_by(actor: Actor) -> set[str]:
    """The type names ``actor`` consumes, per the table."""
    return {name for name, r in BY_TYPE.items() if actor in r.handled_by}


def missing() -> list[str]:
    """Registered message types the table does not describe (should be none)."""
    return [m.type_name() for m in registry.MESSAGES if m.type_name() not in BY_TYPE]
