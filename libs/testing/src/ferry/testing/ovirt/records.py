"""What the engine stand-in knows: VMs, their disks and NICs, image transfers, backups
and checkpoints (the engine's database, as much of it as the stand-in models)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ferry.testing.ovirt import vdsm


@dataclass
class Disk:
    name: str
    image: Path
    format: str  # "raw" or "cow" (qcow2), as the engine names them
    size: int
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    interface: str = "virtio"
    bootable: bool = True
    domain: str = "data"
    locked: bool = False
    backup: str = "none"  # "incremental": the disk's backup mode, as the engine names it
    target: str = ""  # the disk's target in the VM's libvirt domain (vda), when it has one


@dataclass
class Nic:
    name: str
    mac: str
    network: str = "ovirtmgmt"
    interface: str = "virtio"
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class VmRecord:
    name: str
    disks: list[Disk]
    nics: list[Nic] = field(default_factory=list)
    status: str = "up"
    bios: str = "q35_sea_bios"
    memory: int = 1 << 30
    cores: int = 1
    ignores_shutdown: bool = False  # the guest does not answer an ACPI power-button press
    domain: str = ""  # the running libvirt domain behind the VM (backups need one)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


def follow(vm: VmRecord) -> None:
    """A VM with a libvirt domain is down once its domain is (as vdsm reports it)."""
    if vm.domain and vm.status in ("up", "powering_down") and not vdsm.active(vm.domain):
        vm.status = "down"


@dataclass
class Transfer:
    disk: Disk
    phase: str = "initializing"
    ticket: str = ""
    reads_in_final_phase: int = 0
    description: str = ""
    backup: str = ""  # the backup whose export it reads ('' for the disk's own image)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class Checkpoint:
    vm_id: str
    parent: str | None
    disks: list[str]  # ids of the disks it tracks (qcow2 ones with incremental backup)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Backup:
    vm: VmRecord
    disks: list[Disk]
    since: str | None  # from_checkpoint_id
    checkpoint: str | None  # to_checkpoint_id (None: no qcow2 disk tracks changes)
    live: bool  # the VM ran when it began
    description: str = ""
    phase: str = "initializing"
    job: vdsm.Job | None = None
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ended(self) -> bool:
        return self.phase in ("succeeded", "failed")
