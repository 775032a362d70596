"""The KubeVirt ``VirtualMachine`` a migrated VM becomes, as a plain dict.

Both platforms need the same object: the kubernetes platform creates it in a
cluster, the local platform writes it to disk for ``kubectl apply`` and boots
its disks under QEMU. Building it is therefore pure data in, data out, with no
I/O, so it can be unit-tested and schema-checked in isolation.

The choices that matter for a guest to boot after migration:

* the disk bus: virtio only when the guest has virtio drivers (inspection says
  so, or the guest already ran on KVM); otherwise SATA, which every x86 guest
  can boot from. virtio-scsi (``scsi``) only where inspection or a KVM source
  chose it;
* the firmware: BIOS or UEFI as the source booted, UEFI secure boot (which
  requires SMM) only when the source had it, because KubeVirt turns secure boot
  *on* by default for EFI;
* the boot order of the source disks, and the NICs' MAC addresses, so that the
  guest finds its boot disk and keeps its network identity.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ferry.proto import label
from ferry.proto.inventory import (
    Disk,
    Firmware,
    Inspection,
    NetworkTarget,
    Nic,
    ProviderType,
    Vm,
    Volume,
)
from ferry.proto.vm import CreateVm

API_VERSION = "kubevirt.io/v1"
KIND = "VirtualMachine"

ANNOTATION_SOURCE_NAME = "ferry.io/source-vm-name"
ANNOTATION_SOURCE_ID = "ferry.io/source-vm-id"
ANNOTATION_GUEST_OS = "ferry.io/guest-os"

RUN_ALWAYS = "Always"
RUN_HALTED = "Halted"

DEFAULT_MACHINE = "q35"

# Disk buses KubeVirt accepts for a bootable disk (usb cannot boot reliably).
BUS_VIRTIO = "virtio"
BUS_SATA = "sata"
BUS_SCSI = "scsi"
_DISK_BUSES = frozenset({BUS_VIRTIO, BUS_SATA, BUS_SCSI})

MODEL_VIRTIO = "virtio"
MODEL_E1000 = "e1000"
_NIC_MODELS = frozenset({"e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio"})

# Sources whose guests already run on KVM, so their virtio devices keep working.
_KVM_SOURCES = frozenset(
    {ProviderType.OVIRT, ProviderType.OPENSTACK, ProviderType.KUBEVIRT, ProviderType.LIBVIRT}
)

_DNS_LABEL_MAX = 63
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_MAC = re.compile(r"^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$")


class BuildError(ValueError):
    """The inputs cannot make a valid VirtualMachine; the message says which one."""


@dataclass(frozen=True)
class Owner:
    """Who a VirtualMachine belongs to: found again by these labels, not by its name."""

    plan: str
    migration: str
    vm_id: str

    def labels(self) -> dict[str, str]:
        return {
            label.PLAN: label_value(self.plan),
            label.MIGRATION: label_value(self.migration),
            label.VM: label_value(self.vm_id),
        }


@dataclass(frozen=True)
class Target:
    """Where and how the VirtualMachine is created."""

    namespace: str
    name: str = ""  # the plan's targetName; empty means "from the source name"
    run: bool = False  # the power decision: source was on, or targetPowerState


def _digest(value: str, length: int = 8) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:length]


def dns_label(value: str) -> str:
    """Return ``value`` as a DNS-1123 label (lowercase, ``[a-z0-9-]``, at most 63).

    A name that is already valid is kept as is. A name that must be truncated
    gets a short digest of the original so that two long names sharing a prefix
    do not collide; a name with nothing usable becomes ``vm-<digest>``.
    """
    if _DNS_LABEL.match(value) and len(value) <= _DNS_LABEL_MAX:
        return value
    cleaned = re.sub(r"[^a-z0-9-]+", "-", value.lower())
    cleaned = re.sub(r"-{2,}", "-", cleaned).strip("-")
    if not cleaned:
        return f"vm-{_digest(value)}"
    if len(cleaned) > _DNS_LABEL_MAX:
        suffix = _digest(value)
        cleaned = cleaned[: _DNS_LABEL_MAX - len(suffix) - 1].rstrip("-") + "-" + suffix
    return cleaned


def label_value(value: str) -> str:
    """Return ``value`` as a valid Kubernetes label value (at most 63 characters)."""
    if len(value) <= _DNS_LABEL_MAX and _LABEL_VALUE.match(value):
        return value
    suffix = _digest(value, 10)
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)
    cleaned = cleaned[: _DNS_LABEL_MAX - len(suffix) - 1]
    cleaned = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)
    return f"{cleaned}-{suffix}" if cleaned else suffix


def vm_name(vm: Vm, target_name: str = "") -> str:
    """The target VirtualMachine's name: the plan's targetName, else the source name."""
    return dns_label(target_name or vm.name or vm.id)


def disk_bus(vm: Vm, disk: Disk, inspection: Inspection | None) -> str:
    """The bus the migrated guest can boot this disk from.

    After conversion, inspection knows whether virtio drivers are in the guest.
    Without inspection, only a guest that already ran on KVM keeps its bus;
    any other guest gets SATA, the one bus every x86 OS has a driver for.
    """
    if inspection is not None:
        wanted = inspection.disk_bus.lower()
        if wanted == BUS_SATA or not inspection.virtio_drivers:
            return BUS_SATA
        return wanted if wanted in _DISK_BUSES else BUS_VIRTIO
    if vm.provider_type in _KVM_SOURCES and disk.bus.lower() in _DISK_BUSES:
        return disk.bus.lower()
    return BUS_SATA


def nic_model(vm: Vm, nic: Nic, inspection: Inspection | None) -> str:
    """The emulated NIC: virtio with drivers, else e1000, which guests support natively."""
    if inspection is not None:
        wanted = inspection.nic_model.lower()
        if not inspection.virtio_drivers and wanted == MODEL_VIRTIO:
            return MODEL_E1000
        return wanted if wanted in _NIC_MODELS else MODEL_E1000
    if vm.provider_type in _KVM_SOURCES and nic.model.lower() in _NIC_MODELS:
        return nic.model.lower()
    return MODEL_E1000


def mac_address(nic: Nic) -> str:
    """The NIC's MAC in KubeVirt's lowercase colon form, or ``""`` when unknown."""
    mac = nic.mac.strip().lower()
    if not mac:
        return ""
    if not _MAC.match(mac):
        raise BuildError(f"NIC {nic.name!r} has an invalid MAC address {nic.mac!r}")
    return mac.replace("-", ":")


def boot_orders(disks: Sequence[Disk]) -> dict[str, int]:
    """KubeVirt boot orders (unique, from 1) following the source's boot order.

    Disks the source did not list are not bootable, as in the source. When the
    source listed none, the first disk boots, which is what its BIOS did.
    """
    ranked = sorted(
        (d for d in disks if d.boot_order is not None),
        key=lambda d: (d.boot_order, disks.index(d)),
    )
    if not ranked:
        return {disks[0].id: 1} if disks else {}
    return {disk.id: order for order, disk in enumerate(ranked, start=1)}


def _firmware(vm: Vm, inspection: Inspection | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``domain.firmware``, ``domain.features``) for the source's boot firmware."""
    firmware = (inspection.firmware if inspection else None) or vm.firmware
    if firmware == Firmware.UEFI:
        efi = {"secureBoot": vm.secure_boot}
        features: dict[str, Any] = {"smm": {"enabled": True}} if vm.secure_boot else {}
        return {"bootloader": {"efi": efi}}, features
    return {"bootloader": {"bios": {}}}, {}


def _disks(
    vm: Vm, volumes: Sequence[Volume], inspection: Inspection | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(``devices.disks``, ``volumes``): one disk per source disk, in source order."""
    by_disk = {v.disk_id: v for v in volumes}
    known = {d.id for d in vm.disks}
    stray = sorted(set(by_disk) - known)
    if stray:
        raise BuildError(f"volumes for disks the VM does not have: {', '.join(stray)}")
    missing = [d.name or d.id for d in vm.disks if d.id not in by_disk]
    if missing:
        raise BuildError(f"no target volume for disk(s): {', '.join(missing)}")
    orders = boot_orders(vm.disks)
    disks: list[dict[str, Any]] = []
    vols: list[dict[str, Any]] = []
    for index, disk in enumerate(vm.disks):
        name = f"disk-{index}"
        entry: dict[str, Any] = {"name": name, "disk": {"bus": disk_bus(vm, disk, inspection)}}
        if disk.id in orders:
            entry["bootOrder"] = orders[disk.id]
        disks.append(entry)
        claim = by_disk[disk.id].name
        vols.append({"name": name, "persistentVolumeClaim": {"claimName": claim}})
    return disks, vols


def _networks(
    vm: Vm, targets: Sequence[NetworkTarget], inspection: Inspection | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(``devices.interfaces``, ``networks``): one interface per mapped source NIC.

    The pod network gets masquerade (NAT behind the pod IP, the only binding
    KubeVirt allows there); a Multus network gets a bridge, so the guest keeps
    its MAC on the wire. At most one NIC may use the pod network.
    """
    by_nic = {t.nic_id: t for t in targets}
    unmapped = [n.name or n.id for n in vm.nics if n.id not in by_nic]
    if unmapped:
        raise BuildError(f"no network mapping for NIC(s): {', '.join(unmapped)}")
    interfaces: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    pods = 0
    for index, nic in enumerate(vm.nics):
        target = by_nic[nic.id]
        kind = target.type.lower()
        if kind == "ignored":
            continue
        name = f"net-{index}"
        interface: dict[str, Any] = {"name": name, "model": nic_model(vm, nic, inspection)}
        mac = mac_address(nic)
        if mac:
            interface["macAddress"] = mac
        if kind == "pod":
            pods += 1
            interface["masquerade"] = {}
            networks.append({"name": name, "pod": {}})
        elif kind == "multus":
            if not target.name:
                raise BuildError(f"NIC {nic.name!r} maps to Multus without a network name")
            interface["bridge"] = {}
            networks.append({"name": name, "multus": {"networkName": target.name}})
        else:
            raise BuildError(f"NIC {nic.name!r} has unknown network type {target.type!r}")
        interfaces.append(interface)
    if pods > 1:
        raise BuildError("more than one NIC maps to the pod network; KubeVirt allows one")
    return interfaces, networks


def build(
    vm: Vm,
    *,
    inspection: Inspection | None,
    volumes: Sequence[Volume],
    networks: Sequence[NetworkTarget],
    target: Target,
    owner: Owner,
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Return the ``kubevirt.io/v1`` VirtualMachine for one migrated VM."""
    if not target.namespace:
        raise BuildError("the target namespace is empty")
    name = vm_name(vm, target.name)
    labels = {**(extra_labels or {}), **owner.labels()}
    firmware, features = _firmware(vm, inspection)
    disks, vols = _disks(vm, volumes, inspection)
    interfaces, nets = _networks(vm, networks, inspection)
    devices: dict[str, Any] = {"disks": disks, "interfaces": interfaces}
    if not any("pod" in n for n in nets):
        # Otherwise KubeVirt adds a pod NIC the source never had.
        devices["autoattachPodInterface"] = False
    domain: dict[str, Any] = {
        "cpu": {"sockets": vm.cpu_sockets, "cores": vm.cpu_cores, "threads": vm.cpu_threads},
        "memory": {"guest": f"{vm.memory_mib}Mi"},
        "firmware": firmware,
        "machine": {"type": (inspection.machine if inspection else "") or DEFAULT_MACHINE},
        "devices": devices,
    }
    if features:
        domain["features"] = features
    annotations = {ANNOTATION_SOURCE_NAME: vm.name, ANNOTATION_SOURCE_ID: vm.id}
    guest_os = (inspection.os_name if inspection else "") or vm.guest_os
    if guest_os:
        annotations[ANNOTATION_GUEST_OS] = guest_os
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "runStrategy": RUN_ALWAYS if target.run else RUN_HALTED,
            "template": {
                "metadata": {"labels": {**owner.labels(), "kubevirt.io/domain": name}},
                "spec": {"domain": domain, "networks": nets, "volumes": vols},
            },
        },
    }


def owner_labels(manifest: Mapping[str, Any]) -> dict[str, str]:
    """The ownership labels of a built VirtualMachine (what "the same VM" means)."""
    labels = manifest.get("metadata", {}).get("labels", {})
    keys = (label.PLAN, label.MIGRATION, label.VM)
    return {k: str(labels[k]) for k in keys if k in labels}


def from_create(command: CreateVm) -> dict[str, Any]:
    """The VirtualMachine a ``vm.CreateVm`` command asks for."""
    return build(
        command.inventory,
        inspection=command.inspection,
        volumes=command.volumes,
        networks=command.networks,
        target=Target(namespace=command.namespace, name=command.target_name, run=command.run),
        owner=Owner(plan=command.plan, migration=command.migration, vm_id=command.vm),
    )
