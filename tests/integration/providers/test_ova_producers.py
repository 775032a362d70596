# ruff: noqa: E501  (OVF texts keep the producers' long lines)
"""Packages in the shapes Cisco, Ganeti, Vagrant, Packer and vCenter (OVF 2.0) write.

Each descriptor is written here from what the producer emits (namespaces, section
order, units, how disks are attached), with a real disk image, and read through
the provider end to end: the VM is listed, and its disks read back the source.
"""

from __future__ import annotations

from pathlib import Path

import ovfkit
import pytest

from ferry.proto.inventory import DiskFormat, Status
from ferry.providers.ova.provider import OvaProvider

OVF1, OVF2, RASD = ovfkit.OVF1, ovfkit.OVF2, ovfkit.RASD
SPARSE_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#sparse"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    area = tmp_path / "import"
    area.mkdir()
    return area


async def _read_back(provider: OvaProvider, vm_id: str, images: ovfkit.Images) -> None:
    vm = await provider.vm(vm_id)
    disk = next(d for d in vm.disks if not d.blank)
    async with provider.open_disk(vm, disk.id) as reader:
        for offset, length, _ in ovfkit.DATA:
            assert await reader.read(offset, length) == images.expected[offset : offset + length]


def cisco_ovf(size: int) -> str:
    """A Cisco-style appliance: sizes as deployment options, a data disk sized by a property."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ovf:Envelope xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}" xmlns:cisco="http://www.cisco.com/schema/ovf">
  <ovf:References>
    <ovf:File ovf:id="csr_disk" ovf:href="csr1000v.vmdk" ovf:size="{size}"/>
  </ovf:References>
  <ovf:DiskSection>
    <ovf:Info>Virtual disk information</ovf:Info>
    <ovf:Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1" ovf:fileRef="csr_disk" ovf:format="{ovfkit.STREAM_URI}"/>
    <ovf:Disk ovf:capacity="${{log_disk_mb}}" ovf:capacityAllocationUnits="MegaBytes" ovf:diskId="logdisk"/>
  </ovf:DiskSection>
  <ovf:DeploymentOptionSection>
    <ovf:Info>Configuration Profiles</ovf:Info>
    <ovf:Configuration ovf:id="1CPU-4GB"><ovf:Label>Small</ovf:Label><ovf:Description>1 vCPU</ovf:Description></ovf:Configuration>
    <ovf:Configuration ovf:default="true" ovf:id="2CPU-4GB"><ovf:Label>Medium</ovf:Label><ovf:Description>2 vCPUs</ovf:Description></ovf:Configuration>
    <ovf:Configuration ovf:id="4CPU-8GB"><ovf:Label>Large</ovf:Label><ovf:Description>4 vCPUs</ovf:Description></ovf:Configuration>
  </ovf:DeploymentOptionSection>
  <ovf:VirtualSystem ovf:id="csr1000v">
    <ovf:Info>Cisco router</ovf:Info>
    <ovf:Name>csr1000v</ovf:Name>
    <ovf:ProductSection ovf:class="com.cisco.csr1000v" ovf:instance="1">
      <ovf:Info>Information about the installed software</ovf:Info>
      <ovf:Product>Cisco CSR 1000V</ovf:Product>
      <ovf:Property ovf:key="log_disk_mb" ovf:type="int" ovf:value="16" ovf:userConfigurable="false">
        <ovf:Value ovf:configuration="4CPU-8GB" ovf:value="32"/>
      </ovf:Property>
    </ovf:ProductSection>
    <ovf:OperatingSystemSection ovf:id="100"><ovf:Info>OS</ovf:Info><ovf:Description>Cisco IOS-XE</ovf:Description></ovf:OperatingSystemSection>
    <ovf:VirtualHardwareSection>
      <ovf:Info>Virtual hardware requirements</ovf:Info>
      <ovf:Item ovf:configuration="1CPU-4GB"><rasd:ElementName>1 vCPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></ovf:Item>
      <ovf:Item ovf:configuration="2CPU-4GB"><rasd:ElementName>2 vCPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></ovf:Item>
      <ovf:Item ovf:configuration="4CPU-8GB"><rasd:ElementName>4 vCPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>4</rasd:VirtualQuantity></ovf:Item>
      <ovf:Item ovf:configuration="1CPU-4GB 2CPU-4GB"><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>4096</rasd:VirtualQuantity></ovf:Item>
      <ovf:Item ovf:configuration="4CPU-8GB"><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>8192</rasd:VirtualQuantity></ovf:Item>
      <ovf:Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></ovf:Item>
      <ovf:Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:HostResource>ovf:/file/csr_disk</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></ovf:Item>
      <ovf:Item><rasd:AddressOnParent>1</rasd:AddressOnParent><rasd:HostResource>ovf:/disk/logdisk</rasd:HostResource><rasd:InstanceID>5</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></ovf:Item>
      <ovf:Item><rasd:Connection>GigabitEthernet1</rasd:Connection><rasd:ElementName>GigabitEthernet1</rasd:ElementName><rasd:InstanceID>6</rasd:InstanceID><rasd:ResourceSubType>VMXNET3</rasd:ResourceSubType><rasd:ResourceType>10</rasd:ResourceType></ovf:Item>
    </ovf:VirtualHardwareSection>
  </ovf:VirtualSystem>
</ovf:Envelope>
"""


async def test_cisco_appliance_with_profiles_a_file_drive_and_a_property_sized_blank_disk(
    root: Path, images: ovfkit.Images
) -> None:
    # Given a Cisco-style OVA
    stream = images.stream.read_bytes()
    ovfkit.write_ova(
        root / "csr.ova", "csr1000v.ovf", cisco_ovf(len(stream)), [("csr1000v.vmdk", stream)]
    )
    provider = OvaProvider(root)

    # When listed
    vm = await provider.vm("csr/csr1000v")

    # Then the default profile is described, the others listed, both disks present
    assert vm.status is Status.OK
    assert (vm.configuration, vm.configurations) == (
        "2CPU-4GB",
        ["1CPU-4GB", "2CPU-4GB", "4CPU-8GB"],
    )
    assert vm.cpu_sockets * vm.cpu_cores == 2 and vm.memory_mib == 4096
    assert [(d.id, d.blank, d.capacity) for d in vm.disks] == [
        ("vmdisk1", False, ovfkit.SOURCE_SIZE),
        ("logdisk", True, 16 * ovfkit.MiB),
    ]
    assert [n.model for n in vm.nics] == ["vmxnet3"]
    await _read_back(provider, vm.id, images)


def ganeti_ovf(size: int) -> str:
    """What Ganeti's ``gnt-backup export`` / ovfconverter writes: OVF 1.0, gnt: section, sparse VMDK."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}" xmlns:gnt="http://ganeti">
  <References>
    <File ovf:href="disk0.vmdk" ovf:id="file0"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package.</Info>
    <Disk ovf:capacity="{ovfkit.SOURCE_SIZE}" ovf:diskId="disk0" ovf:fileRef="file0" ovf:format="{SPARSE_URI}"/>
  </DiskSection>
  <NetworkSection><Info>List of logical networks.</Info><Network ovf:name="routed0"/></NetworkSection>
  <VirtualSystem ovf:id="instance1.example.com">
    <Info>A virtual machine.</Info>
    <Name>instance1.example.com</Name>
    <OperatingSystemSection ovf:id="93"><Info>Installed guest operating system.</Info><Description>debootstrap+default</Description></OperatingSystemSection>
    <gnt:GanetiSection><gnt:Version>0</gnt:Version><gnt:AutoBalance>True</gnt:AutoBalance><gnt:Hypervisor gnt:name="kvm"/></gnt:GanetiSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <Item><rasd:ElementName>1 virtual CPU(s)</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>512MB of memory</rasd:ElementName><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>512</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>0</rasd:Address><rasd:ElementName>scsi_controller0</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:ElementName>disk0</rasd:ElementName><rasd:HostResource>ovf:/disk/disk0</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
      <Item><rasd:Address>aa:00:00:35:ee:01</rasd:Address><rasd:Connection>routed0</rasd:Connection><rasd:ElementName>routed0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID><rasd:ResourceType>10</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


async def test_ganeti_export_folder_with_a_dotted_instance_name(
    root: Path, images: ovfkit.Images
) -> None:
    # Given a Ganeti export unpacked in a folder (no manifest, no file sizes)
    folder = root / "instance1"
    folder.mkdir()
    (folder / "instance1.ovf").write_text(ganeti_ovf(images.sparse.stat().st_size))
    (folder / "disk0.vmdk").write_bytes(images.sparse.read_bytes())
    provider = OvaProvider(root)

    # When listed
    [vm] = await provider.inventory()

    # Then the VM, its sparse VMDK and its MAC are read, with the missing manifest noted
    assert vm.id == "instance1/instance1/instance1.example.com"
    assert vm.memory_mib == 512 and vm.disks[0].format is DiskFormat.VMDK
    assert vm.disks[0].bus == "scsi" and vm.nics[0].mac == "aa:00:00:35:ee:01"
    assert any("no manifest" in w for w in vm.warnings)
    await _read_back(provider, vm.id, images)


@pytest.mark.parametrize(
    ("producer", "descriptor"), [("vagrant", "box.ovf"), ("packer", "packer-debian.ovf")]
)
async def test_vagrant_box_and_packer_output_folders(
    producer: str, descriptor: str, root: Path, images: ovfkit.Images
) -> None:
    # Given a VirtualBox-written OVF in a folder, as a Vagrant box or Packer's output holds it
    stream = images.stream.read_bytes()
    folder = root / producer
    folder.mkdir()
    disk = descriptor.removesuffix(".ovf") + "-disk001.vmdk"
    (folder / descriptor).write_text(ovfkit.virtualbox_ovf(disk, len(stream), ovfkit.SOURCE_SIZE))
    (folder / disk).write_bytes(stream)
    if producer == "vagrant":
        (folder / "metadata.json").write_text('{"provider": "virtualbox"}')
        (folder / "Vagrantfile").write_text("Vagrant.configure('2') do |config| end\n")
    provider = OvaProvider(root)

    # When listed / Then the VM reads with VirtualBox's MACs and firmware
    [vm] = await provider.inventory()
    assert vm.firmware.value == "uefi" and vm.nics and vm.nics[0].mac
    await _read_back(provider, vm.id, images)


def vcenter_ovf2(size: int) -> str:
    """vCenter's OVF 2.0 export: StorageItem and EthernetPortItem, capacity with spaces in units."""
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{OVF2}" xmlns:ovf="{OVF2}" xmlns:rasd="{RASD}" xmlns:sasd="{ovfkit.SASD}" xmlns:epasd="{ovfkit.EPASD}" xmlns:vmw="{ovfkit.VMW}">
  <References><File ovf:href="app-disk1.vmdk" ovf:id="file1" ovf:size="{size}"/></References>
  <DiskSection><Info>Virtual disk information</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="byte*2^20" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{ovfkit.STREAM_URI}"/>
  </DiskSection>
  <VirtualSystem ovf:id="app 01">
    <Info>A virtual machine</Info><Name>app 01</Name>
    <OperatingSystemSection ovf:id="101" vmw:osType="otherLinux64Guest"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection><Info>Virtual hardware requirements</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity><vmw:CoresPerSocket ovf:required="false">2</vmw:CoresPerSocket></Item>
      <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits><rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>vmware.nvme.controller</rasd:ResourceSubType><rasd:ResourceType>20</rasd:ResourceType></Item>
      <StorageItem><sasd:AddressOnParent>0</sasd:AddressOnParent><sasd:HostResource>ovf:/disk/vmdisk1</sasd:HostResource><sasd:InstanceID>4</sasd:InstanceID><sasd:Parent>3</sasd:Parent><sasd:ResourceType>17</sasd:ResourceType></StorageItem>
      <EthernetPortItem><epasd:Address>00:50:56:01:02:03</epasd:Address><epasd:Connection>VM Network</epasd:Connection><epasd:InstanceID>5</epasd:InstanceID><epasd:ResourceSubType>VmxNet3</epasd:ResourceSubType><epasd:ResourceType>10</epasd:ResourceType></EthernetPortItem>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


async def test_vcenter_ovf2_export_with_a_space_in_its_id(
    root: Path, images: ovfkit.Images
) -> None:
    stream = images.stream.read_bytes()
    ovfkit.write_ova(
        root / "app.ova", "app.ovf", vcenter_ovf2(len(stream)), [("app-disk1.vmdk", stream)]
    )
    provider = OvaProvider(root)
    [vm] = await provider.inventory()
    assert vm.id == "app/app%2001" and vm.name == "app 01"
    assert (vm.cpu_sockets, vm.cpu_cores, vm.memory_mib) == (1, 2, 2048)
    assert vm.disks[0].bus == "nvme" and vm.nics[0].mac == "00:50:56:01:02:03"
    assert vm.firmware.value == "uefi"
    await _read_back(provider, vm.id, images)
