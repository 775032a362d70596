# ruff: noqa: E501  (OVF texts keep the exporters' long lines)
"""Builders for real-shaped OVA/OVF packages with real disks made by qemu-img.

The OVF texts follow what the three exporters actually write (namespaces, section
shapes, units, where MACs and firmware live); the disks are real images converted
from one raw source, so bytes read back can be compared with that source.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
SOURCE_SIZE = 8 * MiB
# (offset, length, byte) ranges of the source disk that hold data; the rest is zeros.
DATA = [(0, 64 * 1024, 0xA5), (3 * MiB, 192 * 1024, 0x5A), (SOURCE_SIZE - 4096, 4096, 0x3C)]

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
EPASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_EthernetPortAllocationSettingData"
SASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData"
VMW = "http://www.vmware.com/schema/ovf"
VBOX = "http://www.virtualbox.org/ovf/machine"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
STREAM_URI = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@dataclass
class Images:
    """One raw source disk and the same content in every supported format."""

    raw: Path
    stream: Path
    sparse: Path
    qcow2: Path
    flat_descriptor: Path
    flat_extent: Path
    expected: bytes = field(repr=False, default=b"")


def make_images(directory: Path) -> Images:
    directory.mkdir(parents=True, exist_ok=True)
    raw = directory / "source.raw"
    with raw.open("wb") as f:
        f.truncate(SOURCE_SIZE)
        for offset, length, value in DATA:
            f.seek(offset)
            f.write(bytes([value]) * length)
    stream = directory / "disk-stream.vmdk"
    sparse = directory / "disk-sparse.vmdk"
    qcow2 = directory / "disk.qcow2"
    flat = directory / "disk-flat-desc.vmdk"
    run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=streamOptimized",
        str(raw),
        str(stream),
    )
    run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicSparse",
        str(raw),
        str(sparse),
    )
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2))
    run(
        "qemu-img",
        "convert",
        "-f",
        "raw",
        "-O",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        str(raw),
        str(flat),
    )
    return Images(
        raw, stream, sparse, qcow2, flat, directory / "disk-flat-desc-flat.vmdk", raw.read_bytes()
    )


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def manifest(
    members: list[tuple[str, bytes]], algorithm: str = "SHA256", vbox: bool = False
) -> bytes:
    lines = []
    for name, data in members:
        digest = hashlib.new(algorithm.lower(), data).hexdigest()
        lines.append(
            f"{algorithm} ({name}) = {digest}" if vbox else f"{algorithm}({name})= {digest}"
        )
    return ("\n".join(lines) + "\n").encode()


def write_ova(
    path: Path,
    ovf_name: str,
    ovf: str,
    files: list[tuple[str, bytes]],
    *,
    with_manifest: bool = True,
    algorithm: str = "SHA256",
    vbox: bool = False,
) -> Path:
    """An OVA as exporters lay it out: descriptor first, manifest, then the disks."""
    members = [(ovf_name, ovf.encode()), *files]
    if with_manifest:
        mf = manifest(members, algorithm, vbox)
        members.insert(1, (ovf_name[:-4] + ".mf", mf))
    path.write_bytes(tar_bytes(members))
    return path


# -- OVF texts --------------------------------------------------------------------


def vmware_ovf(
    disks: list[dict[str, object]],
    *,
    name: str = "web01",
    efi: bool = True,
    macs: tuple[str, ...] = ("00:50:56:8a:12:34",),
    cpus: int = 4,
    cores: int = 2,
    memory_mib: int = 4096,
) -> str:
    """What ovftool writes for a vSphere VM (OVF 1.x, vmw extensions)."""
    files = "\n".join(
        f'    <File ovf:href="{d["href"]}" ovf:id="file{i}" ovf:size="{d["size"]}"/>'
        for i, d in enumerate(disks, 1)
    )
    disk_lines = "\n".join(
        f'    <Disk ovf:capacity="{d.get("capacity", 8)}" ovf:capacityAllocationUnits="{d.get("units", "byte * 2^20")}"'
        f' ovf:diskId="vmdisk{i}" ovf:fileRef="file{i}" ovf:format="{d.get("format", STREAM_URI)}"'
        f' ovf:populatedSize="{d.get("populated", 327680)}"/>'
        for i, d in enumerate(disks, 1)
    )
    disk_items = "\n".join(
        f"""      <Item>
        <rasd:AddressOnParent>{i - 1}</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk {i}</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk{i}</rasd:HostResource>
        <rasd:InstanceID>{10 + i}</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="backing.writeThrough" vmw:value="false"/>
      </Item>"""
        for i, _ in enumerate(disks, 1)
    )
    nic_items = "\n".join(
        f"""      <Item>
        <rasd:Address>{mac}</rasd:Address>
        <rasd:AddressOnParent>{7 + i}</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on &quot;VM Network&quot;</rasd:Description>
        <rasd:ElementName>Network adapter {i + 1}</rasd:ElementName>
        <rasd:InstanceID>{20 + i}</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
        <vmw:Config ovf:required="false" vmw:key="wakeOnLanEnabled" vmw:value="true"/>
      </Item>"""
        for i, mac in enumerate(macs)
    )
    firmware = "efi" if efi else "bios"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!--Generated by VMware ovftool 4.4.3 (build-18663434), UTC time: 2026-01-12T10:11:12.123456Z-->
<Envelope vmw:buildId="build-18663434" xmlns="{OVF1}" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}" xmlns:vmw="{VMW}" xmlns:vssd="{VSSD}" xmlns:xsi="{XSI}">
  <References>
{files}
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{disk_lines}
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The VM Network network</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian GNU/Linux 11 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of Virtual CPUs</rasd:Description>
        <rasd:ElementName>{cpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{cpus}</rasd:VirtualQuantity>
        <vmw:CoresPerSocket ovf:required="false">{cores}</vmw:CoresPerSocket>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>{memory_mib}MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{memory_mib}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item ovf:required="false">
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>false</rasd:AutomaticAllocation>
        <rasd:ElementName>CD/DVD drive 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceSubType>vmware.cdrom.remotepassthrough</rasd:ResourceSubType>
        <rasd:ResourceType>15</rasd:ResourceType>
      </Item>
{disk_items}
{nic_items}
      <vmw:Config ovf:required="false" vmw:key="cpuHotAddEnabled" vmw:value="false"/>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
      <vmw:Config ovf:required="false" vmw:key="uefi.secureBoot.enabled" vmw:value="{str(efi).lower()}"/>
      <vmw:Config ovf:required="false" vmw:key="tools.syncTimeWithHost" vmw:value="false"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def virtualbox_ovf(
    href: str, size: int, capacity: int, *, version: int = 1, efi: bool = True
) -> str:
    """What VirtualBox's Export Appliance writes (OVF 1.0, or 2.0 with epasd/sasd)."""
    ns = OVF1 if version == 1 else OVF2
    storage_item = "StorageItem" if version == 2 else "Item"
    port_item = "EthernetPortItem" if version == 2 else "Item"
    sp = "sasd" if version == 2 else "rasd"
    ep = "epasd" if version == 2 else "rasd"
    firmware = '<Firmware type="EFI"/>' if efi else '<Firmware type="BIOS"/>'
    return f"""<?xml version="1.0"?>
<Envelope ovf:version="{version}.0" xml:lang="en-US" xmlns="{ns}" xmlns:ovf="{ns}" xmlns:rasd="{RASD}" xmlns:vssd="{VSSD}" xmlns:xsi="{XSI}" xmlns:vbox="{VBOX}" xmlns:epasd="{EPASD}" xmlns:sasd="{SASD}">
  <References>
    <File ovf:id="file1" ovf:href="{href}" ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM_URI}" vbox:uuid="a7bb0a42-62cd-4f6e-8c44-3d2a3e6bd1a0"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT">
      <Description>Logical network used by this appliance.</Description>
    </Network>
    <Network ovf:name="Bridged">
      <Description>Logical network used by this appliance.</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="debian12">
    <Info>A virtual machine</Info>
    <OperatingSystemSection ovf:id="96">
      <Info>The kind of installed guest operating system</Info>
      <Description>Debian_64</Description>
      <vbox:OSType ovf:required="false">Debian12_64</vbox:OSType>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>debian12</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>2 virtual CPU</rasd:Caption>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:Caption>2048 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:ElementName>2048 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>ideController0</rasd:Caption>
        <rasd:Description>IDE Controller</rasd:Description>
        <rasd:ElementName>ideController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>PIIX4</rasd:ResourceSubType>
        <rasd:ResourceType>5</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Caption>sataController0</rasd:Caption>
        <rasd:Description>SATA Controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <{port_item}>
        <{ep}:AutomaticAllocation>true</{ep}:AutomaticAllocation>
        <{ep}:Caption>Ethernet adapter on 'NAT'</{ep}:Caption>
        <{ep}:Connection>NAT</{ep}:Connection>
        <{ep}:ElementName>Ethernet adapter on 'NAT'</{ep}:ElementName>
        <{ep}:InstanceID>5</{ep}:InstanceID>
        <{ep}:ResourceSubType>E1000</{ep}:ResourceSubType>
        <{ep}:ResourceType>10</{ep}:ResourceType>
      </{port_item}>
      <{port_item}>
        <{ep}:AutomaticAllocation>true</{ep}:AutomaticAllocation>
        <{ep}:Caption>Ethernet adapter on 'Bridged'</{ep}:Caption>
        <{ep}:Connection>Bridged</{ep}:Connection>
        <{ep}:ElementName>Ethernet adapter on 'Bridged'</{ep}:ElementName>
        <{ep}:InstanceID>6</{ep}:InstanceID>
        <{ep}:ResourceSubType>virtio</{ep}:ResourceSubType>
        <{ep}:ResourceType>10</{ep}:ResourceType>
      </{port_item}>
      <{storage_item}>
        <{sp}:AddressOnParent>0</{sp}:AddressOnParent>
        <{sp}:Caption>disk1</{sp}:Caption>
        <{sp}:Description>Disk Image</{sp}:Description>
        <{sp}:ElementName>disk1</{sp}:ElementName>
        <{sp}:HostResource>/disk/vmdisk1</{sp}:HostResource>
        <{sp}:InstanceID>7</{sp}:InstanceID>
        <{sp}:Parent>4</{sp}:Parent>
        <{sp}:ResourceType>17</{sp}:ResourceType>
      </{storage_item}>
    </VirtualHardwareSection>
    <vbox:Machine ovf:required="false" version="1.19-linux" uuid="{{5b3e2a8c-1f4d-4c1e-9a7b-2f6e0d3c9b11}}" name="debian12">
      <ovf:Info>Complete VirtualBox machine configuration in VirtualBox format</ovf:Info>
      <Hardware>
        <CPU count="2"/>
        <Memory RAMSize="2048"/>
        {firmware}
        <Network>
          <Adapter slot="0" enabled="true" MACAddress="0800271A2B3C" type="82540EM">
            <NAT/>
          </Adapter>
          <Adapter slot="1" enabled="true" MACAddress="0800274D5E6F" type="virtio">
            <BridgedInterface name="eth0"/>
          </Adapter>
          <Adapter slot="2" enabled="false" MACAddress="080027000001" type="82540EM"/>
        </Network>
      </Hardware>
    </vbox:Machine>
  </VirtualSystem>
</Envelope>
"""


def ovirt_ovf(
    image_id: str,
    group_id: str,
    size: int,
    capacity_gib: int,
    *,
    volume_format: str = "COW",
    bios_type: int = 3,
) -> str:
    """What oVirt's "Export as OVA" writes: typed Sections, Content, COW/RAW volumes."""
    fmt = (
        "http://en.wikipedia.org/wiki/Qcow2"
        if volume_format == "COW"
        else "http://en.wikipedia.org/wiki/Byte"
    )
    capacity = capacity_gib * 1024**3
    return f"""<?xml version='1.0' encoding='UTF-8'?>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="{RASD}" xmlns:vssd="{VSSD}" xmlns:xsi="{XSI}" ovf:version="4.4.0.0">
  <References>
    <File ovf:href="{group_id}/{image_id}" ovf:id="{image_id}" ovf:size="{size}" ovf:description="rhel9-disk"/>
  </References>
  <Section xsi:type="ovf:NetworkSection_Type">
    <Info>List of networks</Info>
    <Network ovf:name="ovirtmgmt"/>
  </Section>
  <Section xsi:type="ovf:DiskSection_Type">
    <Info>List of Virtual Disks</Info>
    <Disk ovf:diskId="{image_id}" ovf:size="{capacity_gib}" ovf:actual_size="1" ovf:vm_snapshot_id="6a1ec2a8-0e3b-4b5c-8f43-3f1d0f6f7b6a" ovf:parentRef="" ovf:fileRef="{group_id}/{image_id}" ovf:format="{fmt}" ovf:volume-format="{volume_format}" ovf:volume-type="Sparse" ovf:disk-interface="VirtIO_SCSI" ovf:read-only="false" ovf:shareable="false" ovf:boot="true" ovf:pass-discard="false" ovf:incremental-backup="false" ovf:disk-alias="rhel9_Disk1" ovf:disk-description="" ovf:wipe-after-delete="false" ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:populatedSize="{size}"/>
  </Section>
  <Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">
    <Name>rhel9</Name>
    <TemplateId>00000000-0000-0000-0000-000000000000</TemplateId>
    <Description>exported from oVirt</Description>
    <Domain/>
    <CreationDate>2026/01/10 09:00:00</CreationDate>
    <IsAutoSuspend>false</IsAutoSuspend>
    <TimeZone>Etc/GMT</TimeZone>
    <VmType>1</VmType>
    <BiosType>{bios_type}</BiosType>
    <CustomCpuName/>
    <Section ovf:id="b0ca7f5e-5a4b-4d7f-8a1b-0c9e4b2d1a33" ovf:required="false" xsi:type="ovf:OperatingSystemSection_Type">
      <Info>Guest Operating System</Info>
      <Description>rhel_9x64</Description>
    </Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Info>1 CPU, 2048 Memory</Info>
      <System>
        <vssd:VirtualSystemType>ENGINE 4.4.0.0</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:Caption>4 virtual cpu</rasd:Caption>
        <rasd:Description>Number of virtual CPU</rasd:Description>
        <rasd:InstanceId>1</rasd:InstanceId>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:num_of_sockets>2</rasd:num_of_sockets>
        <rasd:cpu_per_socket>1</rasd:cpu_per_socket>
        <rasd:threads_per_cpu>2</rasd:threads_per_cpu>
        <rasd:max_num_of_vcpus>16</rasd:max_num_of_vcpus>
      </Item>
      <Item>
        <rasd:Caption>2048 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description>
        <rasd:InstanceId>2</rasd:InstanceId>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Caption>rhel9_Disk1</rasd:Caption>
        <rasd:InstanceId>{image_id}</rasd:InstanceId>
        <rasd:ResourceType>17</rasd:ResourceType>
        <rasd:HostResource>{group_id}/{image_id}</rasd:HostResource>
        <rasd:Parent>00000000-0000-0000-0000-000000000000</rasd:Parent>
        <rasd:Template>00000000-0000-0000-0000-000000000000</rasd:Template>
        <rasd:ApplicationList/>
        <rasd:StorageId>d3b1a0c2-7f5e-4e3a-9b2c-1a0d9e8f7c6b</rasd:StorageId>
        <rasd:StoragePoolId>e4c2b1d3-8a6f-4f4b-ac3d-2b1e0f9a8d7c</rasd:StoragePoolId>
        <rasd:CreationDate>2026/01/10 09:00:00</rasd:CreationDate>
        <rasd:LastModified>2026/01/10 09:00:00</rasd:LastModified>
        <rasd:last_modified_date>2026/01/10 09:00:00</rasd:last_modified_date>
      </Item>
      <Item>
        <rasd:Caption>Ethernet adapter on ovirtmgmt</rasd:Caption>
        <rasd:InstanceId>9c1f2e3d-4b5a-4c6d-8e7f-0a1b2c3d4e5f</rasd:InstanceId>
        <rasd:ResourceType>10</rasd:ResourceType>
        <rasd:OtherResourceType>ovirtmgmt</rasd:OtherResourceType>
        <rasd:ResourceSubType>3</rasd:ResourceSubType>
        <rasd:Connection>ovirtmgmt</rasd:Connection>
        <rasd:Linked>true</rasd:Linked>
        <rasd:Name>nic1</rasd:Name>
        <rasd:ElementName>nic1</rasd:ElementName>
        <rasd:MACAddress>56:6f:1a:2b:00:07</rasd:MACAddress>
        <rasd:speed>10000</rasd:speed>
        <Type>interface</Type>
        <Device>bridge</Device>
        <rasd:Address/>
        <BootOrder>0</BootOrder>
        <IsPlugged>true</IsPlugged>
        <IsReadOnly>false</IsReadOnly>
        <Alias>ua-9c1f2e3d</Alias>
      </Item>
    </Section>
  </Content>
</ovf:Envelope>
"""
