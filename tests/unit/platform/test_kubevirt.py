"""The VirtualMachine builder: every shape a source VM can take becomes a valid object.

Each built object is also checked against KubeVirt's published schema, so a
field the API does not know (or a wrong type) fails here, not in a cluster.
"""

from __future__ import annotations

from typing import Any

import pytest

from ferry.platform import kubevirt, schemas
from ferry.proto import vm as vm_proto
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

GiB = 1 << 30
OWNER = kubevirt.Owner(plan="plan-a", migration="mig-1", vm_id="vm-42")


def source(**changes: Any) -> Vm:
    fields: dict[str, Any] = {
        "id": "vm-42",
        "name": "web01",
        "provider_type": ProviderType.VSPHERE,
        "cpu_sockets": 2,
        "disks": [Disk(id="d1", name="Hard disk 1", capacity=10 * GiB, bus="scsi")],
        "nics": [Nic(id="n1", name="Network adapter 1", mac="00:50:56:AB:CD:EF", network="VM")],
    }
    fields.update(changes)
    return Vm(**fields)


def volumes_for(vm: Vm) -> list[Volume]:
    return [Volume(disk_id=d.id, name=f"web01-{d.id}", size=d.capacity) for d in vm.disks]


def pods_for(vm: Vm) -> list[NetworkTarget]:
    return [NetworkTarget(nic_id=n.id, type="pod") for n in vm.nics]


def build(
    vm: Vm,
    inspection: Inspection | None = None,
    networks: list[NetworkTarget] | None = None,
    target: kubevirt.Target | None = None,
) -> dict[str, Any]:
    manifest = kubevirt.build(
        vm,
        inspection=inspection,
        volumes=volumes_for(vm),
        networks=pods_for(vm) if networks is None else networks,
        target=target or kubevirt.Target(namespace="migrated"),
        owner=OWNER,
    )
    schemas.validate(manifest)  # every object the builder makes must be valid
    return manifest


def domain(manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = manifest["spec"]["template"]["spec"]["domain"]
    return result


CONVERTED = Inspection(os_type="linux", os_distro="debian", virtio_drivers=True)


def test_bios_vm_with_cpu_memory_labels_and_halted_run_strategy() -> None:
    # Given a powered-off BIOS VM with 2 sockets, 2 cores, 2 threads and 4 GiB
    vm = source(cpu_sockets=2, cpu_cores=2, cpu_threads=2, memory_mib=4096)

    # When it is built without a power-on decision
    manifest = build(vm, CONVERTED)

    # Then the object has the source's shape, its owners' labels, and stays halted
    assert manifest["apiVersion"] == "kubevirt.io/v1"
    assert manifest["kind"] == "VirtualMachine"
    assert manifest["metadata"]["name"] == "web01"
    assert manifest["metadata"]["namespace"] == "migrated"
    assert manifest["metadata"]["labels"] == {
        "ferry.io/plan": "plan-a",
        "ferry.io/migration": "mig-1",
        "ferry.io/vm": "vm-42",
    }
    assert manifest["spec"]["runStrategy"] == "Halted"
    assert domain(manifest)["cpu"] == {"sockets": 2, "cores": 2, "threads": 2}
    assert domain(manifest)["memory"] == {"guest": "4096Mi"}
    assert domain(manifest)["firmware"] == {"bootloader": {"bios": {}}}
    assert domain(manifest)["machine"] == {"type": "q35"}
    assert "features" not in domain(manifest)


def test_run_decision_sets_always() -> None:
    # Given a VM the plan wants running
    # When it is built with run=True
    manifest = build(source(), CONVERTED, target=kubevirt.Target(namespace="ns", run=True))
    # Then KubeVirt starts it
    assert manifest["spec"]["runStrategy"] == "Always"


def test_uefi_without_secure_boot_turns_kubevirt_default_secure_boot_off() -> None:
    # Given a UEFI source without secure boot
    vm = source(firmware=Firmware.UEFI, secure_boot=False)
    # When it is built
    manifest = build(vm, CONVERTED)
    # Then EFI is used with secure boot explicitly off (KubeVirt defaults it on) and no SMM
    assert domain(manifest)["firmware"] == {"bootloader": {"efi": {"secureBoot": False}}}
    assert "features" not in domain(manifest)


def test_uefi_secure_boot_enables_smm() -> None:
    # Given a UEFI source with secure boot
    vm = source(firmware=Firmware.UEFI, secure_boot=True)
    # When it is built
    manifest = build(vm, CONVERTED)
    # Then secure boot is on and SMM, which it requires, is enabled
    assert domain(manifest)["firmware"] == {"bootloader": {"efi": {"secureBoot": True}}}
    assert domain(manifest)["features"] == {"smm": {"enabled": True}}


def test_inspection_firmware_wins_over_inventory() -> None:
    # Given inventory saying BIOS but inspection finding a UEFI guest
    inspection = Inspection(virtio_drivers=True, firmware=Firmware.UEFI)
    # When it is built
    manifest = build(source(firmware=Firmware.BIOS), inspection)
    # Then the guest gets the firmware it actually boots with
    assert "efi" in domain(manifest)["firmware"]["bootloader"]


def test_multi_disk_keeps_source_order_boot_order_and_claims() -> None:
    # Given three disks where the source boots from the second, then the third
    disks = [
        Disk(id="d1", name="data", capacity=GiB),
        Disk(id="d2", name="system", capacity=GiB, boot_order=0),
        Disk(id="d3", name="rescue", capacity=GiB, boot_order=5),
    ]
    # When it is built from a converted guest
    manifest = build(source(disks=disks), CONVERTED)
    # Then each disk has a virtio bus, the claim of its volume, and a 1-based boot order
    devices = domain(manifest)["devices"]["disks"]
    assert [d["name"] for d in devices] == ["disk-0", "disk-1", "disk-2"]
    assert [d["disk"]["bus"] for d in devices] == ["virtio"] * 3
    assert [d.get("bootOrder") for d in devices] == [None, 1, 2]
    volumes = manifest["spec"]["template"]["spec"]["volumes"]
    assert [v["persistentVolumeClaim"]["claimName"] for v in volumes] == [
        "web01-d1",
        "web01-d2",
        "web01-d3",
    ]
    assert [v["name"] for v in volumes] == ["disk-0", "disk-1", "disk-2"]


def test_without_source_boot_order_the_first_disk_boots() -> None:
    # Given two disks without boot order
    disks = [Disk(id="a", name="a", capacity=GiB), Disk(id="b", name="b", capacity=GiB)]
    # When it is built
    manifest = build(source(disks=disks), CONVERTED)
    # Then the first disk is the boot disk, as the source BIOS would have it
    assert [d.get("bootOrder") for d in domain(manifest)["devices"]["disks"]] == [1, None]


def test_missing_inspection_from_vmware_falls_back_to_sata_and_e1000() -> None:
    # Given a VMware VM without inspection data (no conversion ran)
    vm = source()
    # When it is built
    manifest = build(vm, None)
    # Then the buses every guest has drivers for are used, and the machine is q35
    devices = domain(manifest)["devices"]
    assert devices["disks"][0]["disk"]["bus"] == "sata"
    assert devices["interfaces"][0]["model"] == "e1000"
    assert domain(manifest)["machine"] == {"type": "q35"}


def test_missing_inspection_from_kvm_source_keeps_its_virtio_devices() -> None:
    # Given an oVirt VM (already on KVM) with virtio-scsi and virtio devices
    vm = source(
        provider_type=ProviderType.OVIRT,
        disks=[
            Disk(id="d1", name="os", capacity=GiB, bus="virtio"),
            Disk(id="d2", name="db", capacity=GiB, bus="scsi"),
            Disk(id="d3", name="old", capacity=GiB, bus="ide"),
        ],
        nics=[Nic(id="n1", name="nic1", mac="56:6f:00:00:00:01", model="virtio")],
    )
    # When it is built without inspection
    manifest = build(vm, None)
    # Then the guest keeps virtio and scsi; IDE (not in KubeVirt) becomes SATA
    buses = [d["disk"]["bus"] for d in domain(manifest)["devices"]["disks"]]
    assert buses == ["virtio", "scsi", "sata"]
    assert domain(manifest)["devices"]["interfaces"][0]["model"] == "virtio"


def test_inspection_without_virtio_drivers_uses_sata_and_e1000() -> None:
    # Given an inspection that found no virtio drivers in the guest
    inspection = Inspection(os_type="windows", virtio_drivers=False)
    # When it is built
    manifest = build(source(), inspection)
    # Then the disk stays bootable on SATA and the NIC on e1000
    assert domain(manifest)["devices"]["disks"][0]["disk"]["bus"] == "sata"
    assert domain(manifest)["devices"]["interfaces"][0]["model"] == "e1000"


def test_inspection_choosing_virtio_scsi_is_honoured() -> None:
    # Given a converted guest whose inspection chose virtio-scsi
    inspection = Inspection(virtio_drivers=True, disk_bus="scsi", machine="q35")
    # When it is built
    manifest = build(source(), inspection)
    # Then the disk uses the scsi bus
    assert domain(manifest)["devices"]["disks"][0]["disk"]["bus"] == "scsi"


def test_multi_nic_pod_and_multus_with_macs_preserved() -> None:
    # Given three NICs: one to the pod network, one to a Multus network, one ignored
    nics = [
        Nic(id="n1", name="front", mac="00:50:56:AB:CD:01", network="VM Network"),
        Nic(id="n2", name="back", mac="00-50-56-ab-cd-02", network="Storage"),
        Nic(id="n3", name="unused", mac="00:50:56:ab:cd:03", network="Old"),
    ]
    networks = [
        NetworkTarget(nic_id="n1", type="pod"),
        NetworkTarget(nic_id="n2", type="multus", name="infra/storage-net"),
        NetworkTarget(nic_id="n3", type="ignored"),
    ]
    # When it is built
    manifest = build(source(nics=nics), CONVERTED, networks=networks)
    # Then pod gets masquerade, Multus gets bridge, MACs are kept, the ignored NIC is gone
    interfaces = domain(manifest)["devices"]["interfaces"]
    assert interfaces == [
        {"name": "net-0", "model": "virtio", "macAddress": "00:50:56:ab:cd:01", "masquerade": {}},
        {"name": "net-1", "model": "virtio", "macAddress": "00:50:56:ab:cd:02", "bridge": {}},
    ]
    assert manifest["spec"]["template"]["spec"]["networks"] == [
        {"name": "net-0", "pod": {}},
        {"name": "net-1", "multus": {"networkName": "infra/storage-net"}},
    ]
    assert "autoattachPodInterface" not in domain(manifest)["devices"]


def test_only_multus_networks_disable_the_automatic_pod_nic() -> None:
    # Given a VM whose only NIC goes to a Multus network
    networks = [NetworkTarget(nic_id="n1", type="multus", name="vlan10")]
    # When it is built
    manifest = build(source(), CONVERTED, networks=networks)
    # Then KubeVirt is told not to add a pod NIC the source never had
    assert domain(manifest)["devices"]["autoattachPodInterface"] is False


def test_vm_without_nics_has_no_interfaces() -> None:
    # Given a VM without NICs
    manifest = build(source(nics=[]), CONVERTED, networks=[])
    # Then there are no interfaces and no automatic pod NIC
    assert domain(manifest)["devices"]["interfaces"] == []
    assert domain(manifest)["devices"]["autoattachPodInterface"] is False


@pytest.mark.parametrize(
    ("name", "target_name", "expected"),
    [
        ("web01", "", "web01"),
        ("Web01.Example.COM", "", "web01-example-com"),
        ("my_vm (copy) #2", "", "my-vm-copy-2"),
        ("--weird--", "", "weird"),
        ("web01", "Custom_Name", "custom-name"),
        ("web01", "chosen", "chosen"),
    ],
)
def test_names_become_dns_labels(name: str, target_name: str, expected: str) -> None:
    # Given a source name and maybe a plan targetName
    vm = source(name=name)
    # When it is built
    manifest = build(vm, CONVERTED, target=kubevirt.Target(namespace="ns", name=target_name))
    # Then the name is a DNS-1123 label
    assert manifest["metadata"]["name"] == expected
    assert manifest["metadata"]["annotations"]["ferry.io/source-vm-name"] == name


def test_long_and_unusable_names_stay_valid_and_distinct() -> None:
    # Given two 80-character names sharing a 70-character prefix, and a name of symbols
    long_a = "a" * 70 + "-first-vm"
    long_b = "a" * 70 + "-other-vm"
    # When they become VM names
    name_a = build(source(name=long_a))["metadata"]["name"]
    name_b = build(source(name=long_b))["metadata"]["name"]
    symbols = build(source(name="???"))["metadata"]["name"]
    # Then they fit in 63 characters, differ, and the symbol name is still usable
    assert len(name_a) <= 63 and len(name_b) <= 63
    assert name_a != name_b
    assert symbols.startswith("vm-") and len(symbols) == 11


def test_label_values_from_odd_ids_are_valid() -> None:
    # Given owner ids that are not label values (vSphere moref with colon, long URL)
    owner = kubevirt.Owner(plan="p", migration="m" * 80, vm_id="vm:123/x")
    # When they become labels
    labels = owner.labels()
    # Then each fits the label value rules and stays distinct from the raw id
    for value in labels.values():
        assert len(value) <= 63
        assert kubevirt._LABEL_VALUE.match(value)
    manifest = kubevirt.build(
        source(),
        inspection=None,
        volumes=volumes_for(source()),
        networks=pods_for(source()),
        target=kubevirt.Target(namespace="ns"),
        owner=owner,
    )
    schemas.validate(manifest)


def test_from_create_command_matches_build() -> None:
    # Given a CreateVm command as the controller sends it
    vm = source()
    command = vm_proto.CreateVm(
        plan="plan-a",
        migration="mig-1",
        vm="vm-42",
        namespace="migrated",
        target_name="",
        inventory=vm,
        volumes=volumes_for(vm),
        networks=pods_for(vm),
        inspection=CONVERTED,
        run=True,
    )
    # When the VM is built from it
    manifest = kubevirt.from_create(command)
    # Then it is the same object the builder makes from the parts
    assert manifest == build(vm, CONVERTED, target=kubevirt.Target(namespace="migrated", run=True))
    assert kubevirt.owner_labels(manifest) == OWNER.labels()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"volumes": []}, "no target volume for disk"),
        (
            {
                "volumes": [
                    Volume(disk_id="d1", name="a", size=1),
                    Volume(disk_id="x", name="b", size=1),
                ]
            },
            "disks the VM does not have",
        ),
        ({"networks": []}, "no network mapping"),
        (
            {"networks": [NetworkTarget(nic_id="n1", type="multus")]},
            "without a network name",
        ),
        ({"networks": [NetworkTarget(nic_id="n1", type="sriov-magic")]}, "unknown network type"),
        ({"target": kubevirt.Target(namespace="")}, "namespace is empty"),
    ],
)
def test_bad_inputs_get_clear_errors(change: dict[str, Any], message: str) -> None:
    # Given inputs with one thing wrong
    vm = source()
    arguments: dict[str, Any] = {
        "inspection": CONVERTED,
        "volumes": volumes_for(vm),
        "networks": pods_for(vm),
        "target": kubevirt.Target(namespace="ns"),
        "owner": OWNER,
    }
    arguments.update(change)
    # When the VM is built, Then a BuildError names the problem
    with pytest.raises(kubevirt.BuildError, match=message):
        kubevirt.build(vm, **arguments)


def test_two_nics_on_the_pod_network_are_rejected() -> None:
    # Given two NICs both mapped to the pod network
    nics = [Nic(id="n1", name="a"), Nic(id="n2", name="b")]
    # When it is built, Then KubeVirt's one-pod-network rule is enforced
    with pytest.raises(kubevirt.BuildError, match="one"):
        build(source(nics=nics), CONVERTED)


def test_invalid_mac_is_rejected() -> None:
    # Given a NIC with a malformed MAC
    nics = [Nic(id="n1", name="a", mac="00:50:56:zz:00:01")]
    # When it is built, Then the MAC is named in the error
    with pytest.raises(kubevirt.BuildError, match="invalid MAC"):
        build(source(nics=nics), CONVERTED)
