"""The libvirt XML virt-v2v-in-place reads its guest from."""

from __future__ import annotations

from pathlib import Path

from defusedxml import ElementTree

from ferry.conversion_service.domain import domain_xml, drive_name
from ferry.proto.inventory import Disk, Firmware, Nic, ProviderType, Vm, Volume


def vm(firmware: Firmware = Firmware.BIOS, name: str = "web01") -> Vm:
    return Vm(
        id="vm-1",
        name=name,
        provider_type=ProviderType.VSPHERE,
        firmware=firmware,
        cpu_sockets=2,
        cpu_cores=2,
        memory_mib=2048,
        disks=[
            Disk(id="d1", name="disk 1", capacity=1 << 30, bus="scsi"),
            Disk(id="d2", name="disk 2", capacity=1 << 30, bus="sata"),
        ],
        nics=[
            Nic(id="n1", name="nic", mac="00:50:56:aa:bb:cc", network="VM Network", model="vmxnet3")
        ],
    )


def volumes(tmp_path: Path) -> list[Volume]:
    found = []
    for index, disk_id in enumerate(["d1", "d2"]):
        path = tmp_path / f"vol{index}.img"
        path.write_bytes(b"")
        found.append(Volume(disk_id=disk_id, name=f"vol{index}", size=1 << 30, path=str(path)))
    return found


def test_drive_names_follow_linux_order() -> None:
    # Given disk indexes
    # Then they name drives as virt-v2v and Linux do
    assert [drive_name(i) for i in (0, 1, 25, 26, 27, 701, 702)] == [
        "a",
        "b",
        "z",
        "aa",
        "ab",
        "zz",
        "aaa",
    ]


def test_domain_lists_disks_in_order_with_their_source_bus(tmp_path: Path) -> None:
    # Given a VM with a SCSI and a SATA disk, copied into two volume files
    vols = volumes(tmp_path)
    # When the domain XML is built
    root = ElementTree.fromstring(domain_xml(vm(), vols))
    # Then each disk is a file on its source bus, in disk order
    disks = root.findall("devices/disk")
    assert [d.get("type") for d in disks] == ["file", "file"]
    assert [d.find("source").get("file") for d in disks] == [v.path for v in vols]
    assert [(d.find("target").get("dev"), d.find("target").get("bus")) for d in disks] == [
        ("sda", "scsi"),
        ("sdb", "sata"),
    ]
    assert [d.find("driver").get("type") for d in disks] == ["raw", "raw"]
    # And the machine size and NIC come from the inventory
    assert root.findtext("name") == "web01"
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "2048"
    assert root.findtext("vcpu") == "4"
    nic = root.find("devices/interface")
    assert nic.find("mac").get("address") == "00:50:56:aa:bb:cc"
    assert nic.find("model").get("type") == "vmxnet3"
    assert root.find("os").get("firmware") is None


def test_uefi_guest_asks_for_efi_firmware(tmp_path: Path) -> None:
    # Given a UEFI VM
    root = ElementTree.fromstring(domain_xml(vm(Firmware.UEFI), volumes(tmp_path)))
    # Then virt-v2v is told so (it would otherwise have to guess)
    assert root.find("os").get("firmware") == "efi"


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    # Given a VM name with XML metacharacters and a path with a quote
    vols = volumes(tmp_path)
    odd = tmp_path / "it's <here>.img"
    odd.write_bytes(b"")
    vols[0] = Volume(disk_id="d1", name="x", size=1, path=str(odd))
    # When the XML is built
    root = ElementTree.fromstring(domain_xml(vm(name='web<1>&"co"'), vols))
    # Then the values come back unchanged and the document has no extra elements
    assert root.findtext("name") == 'web<1>&"co"'
    assert root.find("devices/disk/source").get("file") == str(odd)
    assert len(root.findall("devices/disk")) == 2
