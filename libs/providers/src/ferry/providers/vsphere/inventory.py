"""vSphere's inventory as Ferry's: datacenters, clusters, hosts and VMs.

A VM's id is its managed object id (``vm-42``), stable for the life of the VM in
one vCenter, as Forklift uses it. A disk's id is its device key (``2000``); its
storage is the datastore's name, the StorageMap's key; a NIC's network is the
port group's name, the NetworkMap's key.

Everything is read with one property collection per datacenter, never an
attribute at a time, because each attribute is a round trip to vCenter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pyVmomi import vim

from ferry.proto.inventory import Disk, DiskFormat, Firmware, Nic, PowerState, ProviderType, Vm
from ferry.providers.vsphere import client, validator
from ferry.providers.vsphere.snapshots import FERRY_PREFIX, snapshot_names

VM_PATHS = [
    "name",
    "config",
    "runtime.powerState",
    "runtime.host",
    "snapshot",
]

BUSES: list[tuple[type[Any], str]] = [
    (vim.vm.device.VirtualSCSIController, "scsi"),
    (vim.vm.device.VirtualAHCIController, "sata"),
    (vim.vm.device.VirtualIDEController, "ide"),
    (vim.vm.device.VirtualNVMEController, "nvme"),
]
POWER = {"poweredOn": PowerState.ON, "poweredOff": PowerState.OFF, "suspended": PowerState.OFF}


@dataclass
class Host:
    id: str
    name: str
    cluster: str = ""  # empty for a standalone host


@dataclass
class Datacenter:
    id: str
    name: str
    clusters: list[str] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)


@dataclass
class Found:
    """One pass over vCenter: the topology and every VM, with its datacenter."""

    datacenters: list[Datacenter] = field(default_factory=list)
    vms: list[Vm] = field(default_factory=list)
    refs: dict[str, Any] = field(default_factory=dict)  # VM id -> its managed object


def read(si: Any) -> Found:
    """Blocking: run in :meth:`client.Session.call`."""
    content = si.RetrieveContent()
    found = Found()
    for dc_ref, dc_props in client.collect(si, content.rootFolder, vim.Datacenter, ["name"]):
        dc = Datacenter(id=dc_ref._moId, name=dc_props["name"])
        found.datacenters.append(dc)
        clusters = client.collect(si, dc_ref, vim.ClusterComputeResource, ["name"])
        dc.clusters = sorted(props["name"] for _, props in clusters)
        cluster_of = {ref._moId: props["name"] for ref, props in clusters}
        hosts: dict[str, Host] = {}
        for ref, props in client.collect(si, dc_ref, vim.HostSystem, ["name", "parent"]):
            host = Host(ref._moId, props["name"], cluster_of.get(props["parent"]._moId, ""))
            hosts[host.id] = host
        dc.hosts = sorted(hosts.values(), key=lambda h: h.name)
        networks = {
            ref._moId: props["name"]
            for ref, props in client.collect(si, dc_ref, vim.Network, ["name"])
        }
        portgroups = {
            props["key"]: props["name"]
            for _, props in client.collect(
                si, dc_ref, vim.dvs.DistributedVirtualPortgroup, ["key", "name"]
            )
        }
        datastores = {
            ref._moId: props["name"]
            for ref, props in client.collect(si, dc_ref, vim.Datastore, ["name"])
        }
        for ref, props in client.collect(si, dc_ref, vim.VirtualMachine, VM_PATHS):
            config = props.get("config")
            if config is None or config.template:
                continue  # templates and VMs still being created have nothing to migrate
            host_ref = props.get("runtime.host")
            placed = hosts.get(host_ref._moId) if host_ref is not None else None
            vm = build_vm(
                ref._moId,
                props,
                dc.name,
                placed,
                Names(networks, portgroups, datastores),
            )
            found.vms.append(vm)
            found.refs[vm.id] = ref
    found.vms.sort(key=lambda v: v.id)
    return found


@dataclass(frozen=True)
class Names:
    networks: dict[str, str]  # network moref id -> name
    portgroups: dict[str, str]  # distributed port group key -> name
    datastores: dict[str, str]  # datastore moref id -> name


def build_vm(vm_id: str, props: dict[str, Any], dc: str, host: Host | None, names: Names) -> Vm:
    config = props["config"]
    hw = config.hardware
    devices = list(hw.device)
    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    disks = [
        _disk(d, controllers, names) for d in devices if isinstance(d, vim.vm.device.VirtualDisk)
    ]
    nics = [_nic(d, names) for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    cores = max(1, hw.numCoresPerSocket or 1)
    boot = config.bootOptions
    snapshots = snapshot_names(props.get("snapshot"))
    vm = Vm(
        id=vm_id,
        name=props["name"],
        provider_type=ProviderType.VSPHERE,
        power_state=POWER.get(str(props.get("runtime.powerState")), PowerState.UNKNOWN),
        firmware=Firmware.UEFI if config.firmware == "efi" else Firmware.BIOS,
        secure_boot=bool(boot is not None and boot.efiSecureBootEnabled),
        cpu_sockets=max(1, hw.numCPU // cores),
        cpu_cores=cores,
        memory_mib=hw.memoryMB,
        guest_os=config.guestId or "",
        host=host.name if host else "",
        disks=disks,
        nics=nics,
        change_tracking=bool(config.changeTrackingEnabled),
        snapshots=snapshots,
        vtpm=any(isinstance(d, vim.vm.device.VirtualTPM) for d in devices),
        datacenter=dc,
        cluster=host.cluster if host else "",
    )
    blocked = validator.cbt_blocker(str(config.version or ""))
    return validator.with_concerns(vm, ferry_prefix=FERRY_PREFIX, cbt_blocked=blocked)


def _disk(device: Any, controllers: dict[int, Any], names: Names) -> Disk:
    backing = device.backing
    controller = controllers.get(device.controllerKey)
    bus = next((name for kind, name in BUSES if isinstance(controller, kind)), "")
    rdm = isinstance(backing, vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo)
    datastore = getattr(backing, "datastore", None)
    capacity = device.capacityInBytes or device.capacityInKB * 1024
    thin = getattr(backing, "thinProvisioned", None)
    return Disk(
        id=str(device.key),
        name=device.deviceInfo.label if device.deviceInfo else str(device.key),
        capacity=int(capacity),
        format=DiskFormat.VMDK_FLAT,
        storage=names.datastores.get(datastore._moId, "") if datastore is not None else "",
        bus=bus,
        backing=getattr(backing, "fileName", "") or "",
        controller=controller.deviceInfo.label if controller and controller.deviceInfo else "",
        thin=None if thin is None else bool(thin),
        mode=str(getattr(backing, "diskMode", "") or ""),
        shared=str(getattr(backing, "sharing", "") or "") == "sharingMultiWriter",
        rdm=rdm,
    )


MODELS: list[tuple[type[Any], str]] = [
    (vim.vm.device.VirtualVmxnet3, "vmxnet3"),
    (vim.vm.device.VirtualE1000e, "e1000e"),
    (vim.vm.device.VirtualE1000, "e1000"),
    (vim.vm.device.VirtualVmxnet2, "vmxnet2"),
    (vim.vm.device.VirtualPCNet32, "pcnet32"),
]


def _nic(device: Any, names: Names) -> Nic:
    backing = device.backing
    network: str = ""
    if isinstance(backing, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
        net = backing.network
        network = names.networks.get(net._moId, "") if net is not None else ""
        network = network or backing.deviceName or ""
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
        key = str(backing.port.portgroupKey)
        network = names.portgroups.get(key, key)
    elif isinstance(backing, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
        network = backing.opaqueNetworkId
    return Nic(
        id=str(device.key),
        name=device.deviceInfo.label if device.deviceInfo else str(device.key),
        mac=(device.macAddress or "").lower(),
        network=network,
        model=next((name for kind, name in MODELS if isinstance(device, kind)), ""),
    )
