"""OVF descriptor parsing without I/O: units, shapes of the three exporters, refusals."""

from __future__ import annotations

import pytest

from ferry.proto.inventory import DiskFormat, Firmware
from ferry.providers.ova import descriptor, dialects, disks, errors, units

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"


def envelope(disk_attrs: str, items: str = "", extra: str = "", vs_extra: str = "") -> bytes:
    return f"""<?xml version="1.0"?>
<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}"
          xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References><File ovf:id="file1" ovf:href="d.vmdk" ovf:size="1024"/></References>
  <DiskSection><Info>disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" {disk_attrs}/>
  </DiskSection>
  {extra}
  <VirtualSystem ovf:id="vm1">
    <Info>A VM</Info>
    {vs_extra}
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
            <rasd:InstanceID>4</rasd:InstanceID><rasd:Parent>3</rasd:Parent>
            <rasd:ResourceType>17</rasd:ResourceType></Item>
      {items}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>""".encode()


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        (None, 1),
        ("byte", 1),
        ("byte * 2^20", 2**20),
        ("byte * 2^30", 2**30),
        ("byte*2^10", 2**10),
        ("MegaBytes", 2**20),
        ("GigaBytes", 2**30),
        ("KiloBytes", 2**10),
        ("byte * 10^3", 1000),
        ("byte * 1024", 1024),
        ("byte * 2^10 * 1024", 2**20),
        ("bytes", 1),
        ("GB", 2**30),
        ("GiB", 2**30),
        ("MiB", 2**20),
        ("TeraBytes", 2**40),
        ("  byte  *  2 ^ 20 ", 2**20),
    ],
)
def test_allocation_units_are_understood(spelling: str | None, expected: int) -> None:
    # Given an exporter's allocation unit / When it is read / Then the factor is right
    assert units.unit_factor("x.ovf", spelling) == expected


@pytest.mark.parametrize(
    ("value", "spelling"),
    [
        ("-1", None),
        ("1" * 25, None),
        ("4", "byte * 2^70"),
        ("4", "byte * 2^40 * 2^40"),
        ("12abc", None),
        ("", None),
    ],
)
def test_bad_sizes_are_refused(value: str, spelling: str | None) -> None:
    # Given a negative, overflowing or non-numeric size / When scaled / Then refused
    with pytest.raises(errors.ImageSizeError):
        units.scaled("x.ovf", "capacity", value, spelling)


def test_unknown_units_are_a_format_error() -> None:
    # Given a unit no exporter writes / When read / Then a format error names it
    with pytest.raises(errors.OvfFormatError, match="furlongs"):
        units.unit_factor("x.ovf", "furlongs")


def test_capacity_with_units_and_format_uri() -> None:
    # Given a VMware-style disk of 16 GiB, streamOptimized
    data = envelope(
        'ovf:capacity="16" ovf:capacityAllocationUnits="byte * 2^30" '
        'ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" '
        'ovf:populatedSize="1048576"'
    )

    # When parsed
    [system] = descriptor.parse("x.ovf", data)

    # Then capacity, format, populated size and the SCSI bus come through
    [disk] = system.disks
    assert (disk.capacity, disk.declared, disk.populated, disk.bus) == (
        16 * 2**30,
        DiskFormat.VMDK_STREAM,
        1048576,
        "scsi",
    )
    assert (disk.file, disk.file_size) == ("d.vmdk", 1024)


def test_vmware_cpu_topology_firmware_and_nic() -> None:
    # Given 8 vCPUs at 4 cores per socket, EFI with secure boot, and a NIC with its MAC
    items = """
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>3</rasd:ResourceType>
            <rasd:VirtualQuantity>8</rasd:VirtualQuantity>
            <vmw:CoresPerSocket ovf:required="false">4</vmw:CoresPerSocket></Item>
      <Item><rasd:AllocationUnits>byte * 2^30</rasd:AllocationUnits>
            <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
            <rasd:VirtualQuantity>3</rasd:VirtualQuantity></Item>
      <Item><rasd:Address>00-50-56-AB-CD-EF</rasd:Address><rasd:Connection>dmz</rasd:Connection>
            <rasd:ElementName>Network adapter 1</rasd:ElementName>
            <rasd:InstanceID>7</rasd:InstanceID><rasd:ResourceSubType>E1000e</rasd:ResourceSubType>
            <rasd:ResourceType>10</rasd:ResourceType></Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="uefi.secureBoot.enabled" vmw:value="true"/>
    """
    data = envelope('ovf:capacity="1048576"', items)

    # When parsed
    [system] = descriptor.parse("x.ovf", data)

    # Then the topology, memory, firmware and NIC are right
    assert (system.cpu_sockets, system.cpu_cores, system.memory_mib) == (2, 4, 3072)
    assert (system.firmware, system.secure_boot) == (Firmware.UEFI, True)
    [nic] = system.nics
    assert (nic.id, nic.mac, nic.network, nic.model) == ("7", "00:50:56:ab:cd:ef", "dmz", "e1000e")


@pytest.mark.parametrize(
    ("uri", "volume_format", "expected"),
    [
        (
            "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized",
            None,
            DiskFormat.VMDK_STREAM,
        ),
        ("http://www.vmware.com/interfaces/specifications/vmdk.html#sparse", None, DiskFormat.VMDK),
        ("http://www.vmware.com/specifications/vmdk.html#sparse", "COW", DiskFormat.QCOW2),
        ("http://www.vmware.com/specifications/vmdk.html#sparse", "RAW", DiskFormat.RAW),
        ("http://en.wikipedia.org/wiki/Qcow2", None, DiskFormat.QCOW2),
        ("http://en.wikipedia.org/wiki/Byte", None, DiskFormat.RAW),
        ("", None, None),
    ],
)
def test_declared_formats(uri: str, volume_format: str | None, expected: DiskFormat | None) -> None:
    # Given a format URI (and oVirt's volume-format) / When read / Then the format follows
    assert disks.declared_format(uri, volume_format) == expected


def test_ovirt_typed_sections_and_content_are_found() -> None:
    # Given oVirt's shapes: Section xsi:type, Content as the VirtualSystem, BiosType
    data = f"""<?xml version='1.0' encoding='UTF-8'?>
<ovf:Envelope xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1/" xmlns:rasd="{RASD}"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References><File ovf:href="g/i" ovf:id="i" ovf:size="512"/></References>
  <Section xsi:type="ovf:DiskSection_Type"><Info>disks</Info>
    <Disk ovf:diskId="i" ovf:size="2" ovf:fileRef="g/i" ovf:volume-format="RAW"
          ovf:disk-interface="VirtIO" ovf:boot="true"/>
  </Section>
  <Content ovf:id="out" xsi:type="ovf:VirtualSystem_Type">
    <Name>db01</Name><BiosType>4</BiosType>
    <Section xsi:type="ovf:OperatingSystemSection_Type">
      <Description>rhel_8x64</Description>
    </Section>
    <Section xsi:type="ovf:VirtualHardwareSection_Type">
      <Item><rasd:ResourceType>17</rasd:ResourceType><rasd:HostResource>g/i</rasd:HostResource></Item>
    </Section>
  </Content>
</ovf:Envelope>""".encode()

    # When parsed
    [system] = descriptor.parse("vm.ovf", data)

    # Then the VM, its GiB-sized raw virtio boot disk and secure-boot UEFI are found
    assert (system.id, system.name, system.guest_os) == ("out", "db01", "rhel_8x64")
    assert (system.firmware, system.secure_boot) == (Firmware.UEFI, True)
    [disk] = system.disks
    assert (disk.file, disk.capacity, disk.declared, disk.bus, disk.boot_order) == (
        "g/i",
        2 * 2**30,
        DiskFormat.RAW,
        "virtio",
        1,
    )


@pytest.mark.parametrize(
    "prologue",
    [
        "<!DOCTYPE Envelope>",
        '<!DOCTYPE Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
        '<!DOCTYPE Envelope [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>',
    ],
)
def test_dtds_and_entities_are_refused(prologue: str) -> None:
    # Given a descriptor with a DTD / When parsed / Then it is refused as unsafe
    data = envelope('ovf:capacity="1"').replace(b"<Envelope", prologue.encode() + b"\n<Envelope", 1)
    with pytest.raises(errors.UnsafeXmlError, match=r"x\.ovf"):
        descriptor.parse("x.ovf", data)


@pytest.mark.parametrize(
    "href", ["../etc/passwd", "/etc/passwd", "http://example.invalid/d.vmdk", "file:///etc/passwd"]
)
def test_non_local_file_references_are_refused(href: str) -> None:
    # Given a File that points outside the package / When parsed / Then refused
    data = envelope('ovf:capacity="1"').replace(b'ovf:href="d.vmdk"', f'ovf:href="{href}"'.encode())
    if href.startswith("../"):
        # a relative ".." is refused when the package resolves it (see package tests)
        [system] = descriptor.parse("x.ovf", data)
        assert system.disks[0].file == href
        return
    with pytest.raises(errors.UnsafeMemberError):
        descriptor.parse("x.ovf", data)


def test_populated_size_larger_than_capacity_is_refused() -> None:
    # Given populatedSize > capacity / When parsed / Then a size error
    with pytest.raises(errors.ImageSizeError, match="populatedSize"):
        descriptor.parse("x.ovf", envelope('ovf:capacity="10" ovf:populatedSize="11"'))


def test_disk_attached_twice_is_refused() -> None:
    # Given two drive items on one disk / When parsed / Then a format error
    items = """<Item><rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
               <rasd:ResourceType>17</rasd:ResourceType></Item>"""
    with pytest.raises(errors.OvfFormatError, match="attached twice"):
        descriptor.parse("x.ovf", envelope('ovf:capacity="10"', items))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("00:50:56:aa:bb:cc", "00:50:56:aa:bb:cc"),
        ("0800271A2B3C", "08:00:27:1a:2b:3c"),
        ("00-50-56-AA-BB-CC", "00:50:56:aa:bb:cc"),
        ("", ""),
        ("0", ""),
        ("not a mac at all", ""),
    ],
)
def test_macs_are_normalised(value: str, expected: str) -> None:
    # Given a MAC as some exporter spells it / When normalised / Then one spelling
    assert dialects.normal_mac(value) == expected


@pytest.mark.parametrize(
    ("version", "bios", "firmware", "secure"),
    [
        ("4.4.0.0", "1", Firmware.BIOS, False),
        ("4.4.0.0", "3", Firmware.UEFI, False),
        ("4.4.0.0", "4", Firmware.UEFI, True),
        ("4.3.0.0", "2", Firmware.UEFI, False),
        ("4.3.0.0", "3", Firmware.UEFI, True),
        ("4.3.0.0", "1", Firmware.BIOS, False),
    ],
)
def test_ovirt_bios_type_follows_the_engine_version(
    version: str, bios: str, firmware: Firmware, secure: bool
) -> None:
    # Given an oVirt envelope of some engine version with a BiosType
    data = envelope('ovf:capacity="1"', vs_extra=f"<BiosType>{bios}</BiosType>").replace(
        b"<Envelope ", f'<Envelope ovf:version="{version}" '.encode(), 1
    )

    # When parsed
    [system] = descriptor.parse("vm.ovf", data)

    # Then the numbering of that version decides the firmware
    assert (system.firmware, system.secure_boot) == (firmware, secure)
