"""The libvirt document Ferry hands virt-v2v for an OVA VM, without I/O."""

from __future__ import annotations

from defusedxml import ElementTree

from ferry.proto.inventory import Disk, Firmware, Nic, ProviderType, Vm
from ferry.providers.base import QemuSource
from ferry.providers.ova import domainxml


def test_disks_buses_names_and_nics_follow_the_inventory() -> None:
    # Given a VM with an IDE, two SCSI and an NVMe disk, a hostile name and one NIC
    vm = Vm(
        id="p/vm",
        name="web<1>&co",
        provider_type=ProviderType.OVA,
        firmware=Firmware.BIOS,
        cpu_sockets=2,
        cpu_cores=2,
        memory_mib=4096,
        disks=[
            Disk(id=str(i), name=f"d{i}", capacity=1, bus=bus)
            for i, bus in enumerate(["ide", "scsi", "scsi", "nvme"])
        ],
        nics=[
            Nic(id="n", name="n", mac="00:50:56:00:00:01", network="VM Network", model="vmxnet3")
        ],
    )
    sources = [
        QemuSource(
            format="raw",
            options={"driver": "raw", "file": {"driver": "file", "filename": f"/i/{i}"}},
        )
        for i in range(4)
    ]

    # When the document is written and read back
    domain = ElementTree.fromstring(domainxml.source_xml(vm, sources))

    # Then the name is escaped text, and each disk keeps its bus and source in order
    assert domain.findtext("name") == "web<1>&co"
    assert domain.findtext("vcpu") == "4" and domain.find("os").get("firmware") == "bios"
    targets = [
        (d.find("target").get("dev"), d.find("target").get("bus")) for d in domain.iter("disk")
    ]
    assert targets == [("hda", "ide"), ("sda", "scsi"), ("sdb", "scsi"), ("sdc", "sata")]
    assert [d.find("source").get("file") for d in domain.iter("disk")] == [
        s.filename() for s in sources
    ]
    [nic] = domain.iter("interface")
    assert nic.find("source").get("network") == "VM Network"
    assert nic.find("model").get("type") == "vmxnet3"
