"""What a provider knows about a source VM, and what the target side made of it.

These shapes travel inside commands (the controller hands the inventory to the
services that need it), so they are wire contracts too.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec


class ProviderType(StrEnum):
    OVA = "ova"
    VSPHERE = "vsphere"
    OVIRT = "ovirt"
    OPENSTACK = "openstack"
    KUBEVIRT = "kubevirt"
    LIBVIRT = "libvirt"


# The source types that can migrate warm (precopies over changed-block tracking, then a
# short cutover); the others copy a powered-off or exported VM once: cold only.
WARM_SOURCES = frozenset({ProviderType.VSPHERE, ProviderType.OVIRT, ProviderType.LIBVIRT})


class PowerState(StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"


class Firmware(StrEnum):
    BIOS = "bios"
    UEFI = "uefi"


class DiskFormat(StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"
    VMDK_STREAM = "vmdk-stream"  # streamOptimized VMDK (OVA exports)
    VMDK_FLAT = "vmdk-flat"  # monolithicFlat / monolithicSparse descriptor + extents
    VMDK = "vmdk"  # monolithic sparse VMDK in one file


class ConcernCode(StrEnum):
    """Why a source VM cannot migrate as it is: what a validator found."""

    CBT_DISABLED = "cbt_disabled"  # warm only: changed-block tracking is off
    SNAPSHOTS = "snapshots"  # the VM has snapshots of its own
    SHARED_DISK = "shared_disk"  # a disk is shared with other VMs (multi-writer)
    RDM_DISK = "rdm_disk"  # a raw device mapping: a LUN, not a file
    INDEPENDENT_DISK = "independent_disk"  # snapshots skip it: no consistent copy
    VTPM = "vtpm"  # a virtual TPM whose secrets cannot be carried over
    SECURE_BOOT = "secure_boot"  # UEFI secure boot keys cannot be carried over
    UNSUPPORTED = "unsupported"


class Concern(msgspec.Struct, frozen=True, kw_only=True):
    """One reason a VM cannot migrate: the code is what services read, never the text."""

    code: ConcernCode
    message: str
    warm_only: bool = False  # blocks warm migrations only


class Status(StrEnum):
    """Whether a VM (or the package holding it) can be migrated as listed."""

    OK = "ok"
    REJECTED = "rejected"  # ``errors`` says why, in the user's words


class Extent(msgspec.Struct, frozen=True, array_like=True):
    """A byte range of a disk: [offset, offset + length)."""

    offset: int
    length: int


class Disk(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    capacity: int  # virtual size in bytes
    format: DiskFormat = DiskFormat.RAW
    storage: str = ""  # the source datastore / storage domain: the StorageMap's key
    allocated: int | None = None  # bytes of data, when the source knows it
    bus: str = ""  # source controller: scsi, sata, ide, virtio, nvme
    boot_order: int | None = None
    backing: str = ""  # the source's file for the disk ("[datastore] vm/vm.vmdk")
    controller: str = ""  # the controller's label as the source names it
    thin: bool | None = None  # thin provisioned (None: the source does not say)
    mode: str = ""  # the source's disk mode (persistent, independent_persistent…)
    shared: bool = False  # shared with other VMs (multi-writer)
    rdm: bool = False  # a raw device mapping, not a file
    blank: bool = False  # declared by capacity only: migrated as an empty volume
    error: str = ""  # why this disk cannot be read ("" when it can)


class Nic(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    mac: str = ""
    network: str = ""  # the source network: the NetworkMap's key
    model: str = ""  # e1000, vmxnet3, virtio…


class Vm(msgspec.Struct, frozen=True, kw_only=True):
    """One source VM as the provider's inventory describes it."""

    id: str
    name: str
    provider_type: ProviderType
    power_state: PowerState = PowerState.UNKNOWN
    firmware: Firmware = Firmware.BIOS
    secure_boot: bool = False
    cpu_sockets: int = 1
    cpu_cores: int = 1
    cpu_threads: int = 1
    memory_mib: int = 1024
    guest_os: str = ""  # provider's OS hint (e.g. OVF ostype)
    host: str = ""  # source host, for per-host concurrency caps
    disks: list[Disk] = msgspec.field(default_factory=list)
    nics: list[Nic] = msgspec.field(default_factory=list)
    warnings: list[str] = msgspec.field(default_factory=list)  # unsupported features
    change_tracking: bool | None = None  # changed-block tracking on (None: not offered)
    snapshots: list[str] = msgspec.field(default_factory=list)  # the source's own snapshots
    vtpm: bool = False
    datacenter: str = ""
    cluster: str = ""
    concerns: list[Concern] = msgspec.field(default_factory=list)  # the validator's reasons
    status: Status = Status.OK
    errors: list[str] = msgspec.field(default_factory=list)  # why it is rejected
    configuration: str = ""  # the deployment option described (OVF), "" when none
    configurations: list[str] = msgspec.field(default_factory=list)  # every one offered
    # the guest already runs on virtio disks and NICs (so it has their drivers and needs
    # no conversion); None: not known, the guest is converted
    virtio_drivers: bool | None = None
    # the provider asks that a cold migration copy the disks with the importer and then
    # convert in place (flow 1 without precopies) instead of virt-v2v copying them (flow 3)
    importer_copy: bool = False


class Package(msgspec.Struct, frozen=True, kw_only=True):
    """One unit a source is read in (an OVA file, an OVF folder), with its verdict.

    A package that cannot be read at all has no VMs and its reason in ``errors``;
    one whose descriptor reads but some disk does not lists its VMs, each with
    its own ``status`` and ``errors``.
    """

    id: str
    path: str
    status: Status = Status.OK
    errors: list[str] = msgspec.field(default_factory=list)
    vms: list[Vm] = msgspec.field(default_factory=list)


class VolumeMode(StrEnum):
    FILESYSTEM = "Filesystem"
    BLOCK = "Block"


class VolumeTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where one source disk goes on the target, resolved from the StorageMap."""

    disk_id: str
    storage_class: str
    volume_mode: VolumeMode = VolumeMode.FILESYSTEM
    access_modes: list[str] = msgspec.field(default_factory=lambda: ["ReadWriteOnce"])
    format: str = "raw"  # raw or qcow2 (local platform)


class NetworkTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where one source NIC goes on the target, resolved from the NetworkMap."""

    nic_id: str
    type: str = "pod"  # pod | multus | ignored
    name: str = ""  # namespace/name of the NetworkAttachmentDefinition for multus


class Volume(msgspec.Struct, frozen=True, kw_only=True):
    """A target volume as the platform reports it."""

    disk_id: str
    name: str  # PVC / DataVolume name
    size: int  # bytes requested (capacity plus filesystem overhead)
    capacity: int = 0  # guest-visible disk size in bytes (0: not reported)
    path: str = ""  # local platform: the file or block device that holds the data
    format: str = "raw"
    phase: str = "Pending"  # Pending | Bound | Populating | Succeeded | Failed


class Checksum(msgspec.Struct, frozen=True, kw_only=True):
    algorithm: str
    digest: str
    bytes: int


class DiskCopy(msgspec.Struct, frozen=True, kw_only=True):
    """The verified result of copying one disk."""

    disk_id: str
    volume: str
    bytes_copied: int
    source: Checksum
    target: Checksum
    seconds: float = 0.0


class Inspection(msgspec.Struct, frozen=True, kw_only=True):
    """What virt-v2v's inspection found in the guest."""

    os_type: str = ""  # linux, windows
    os_distro: str = ""  # debian, rhel, windows…
    os_name: str = ""  # product name
    os_version: str = ""  # major.minor
    arch: str = ""
    firmware: Firmware | None = None
    virtio_drivers: bool = False  # virtio block/net drivers present after conversion
    disk_bus: str = "virtio"  # the bus the converted guest should boot from
    nic_model: str = "virtio"
    machine: str = "q35"
