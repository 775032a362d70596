"""Every message type by its tag, and each service's failure event."""

from __future__ import annotations

from ferry.proto import conversion, migration, vm, volume
from ferry.proto.base import Failed, Message
from ferry.proto.subjects import Service

MESSAGES: tuple[type[Message], ...] = (
    migration.StartMigration,
    migration.CancelMigration,
    migration.Cutover,
    migration.MigrationStarted,
    migration.MigrationRejected,
    migration.VmStarted,
    migration.StepStarted,
    migration.StepCompleted,
    migration.StepFailed,
    migration.Progress,
    migration.VmCompleted,
    migration.VmFailed,
    migration.VmCanceled,
    migration.MigrationCanceled,
    migration.MigrationCompleted,
    migration.SourcePowerStored,
    migration.SourcePoweredOff,
    migration.SourcePowerRestored,
    migration.ControllerFailed,
    migration.InventoryRead,
    volume.CreateVolumes,
    volume.VolumesCreated,
    volume.AllocateDisks,
    volume.DisksAllocated,
    volume.CopyDisks,
    volume.DiskProgress,
    volume.DisksCopied,
    volume.CleanupVolumes,
    volume.VolumesCleaned,
    volume.VolumeFailed,
    conversion.ConvertGuest,
    conversion.ConversionProgress,
    conversion.GuestConverted,
    conversion.ConversionFailed,
    vm.CreateVm,
    vm.VmCreated,
    vm.PowerOn,
    vm.VmStarting,
    vm.VmRunning,
    vm.PowerOff,
    vm.VmStopped,
    vm.DeleteVm,
    vm.VmDeleted,
    vm.VmServiceFailed,
)

BY_TYPE: dict[str, type[Message]] = {m.type_name(): m for m in MESSAGES}

FAILED: dict[Service, type[Failed]] = {
    Service.CONTROLLER: migration.ControllerFailed,
    Service.VOLUME: volume.VolumeFailed,
    Service.CONVERSION: conversion.ConversionFailed,
    Service.VM: vm.VmServiceFailed,
}


def lookup(type_name: str) -> type[Message] | None:
    return BY_TYPE.get(type_name)
