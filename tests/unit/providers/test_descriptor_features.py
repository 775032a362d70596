# ruff: noqa: E501  (OVF texts keep the producers' long lines)
"""OVF 1.x/2.0 features as producers write them, and the XML limits, without I/O.

Each descriptor is written here in the shape its producer uses (vCenter/ovftool
deployment options and properties, Cisco appliances, Ganeti, oVirt direct LUNs,
OVF 2.0 StorageItems); none is a copied file.
"""

from __future__ import annotations

import pytest

from ferry.providers.ova import descriptor, errors
from ferry.providers.ova.limits import Limits

OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
SASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData"
GiB = 2**30


def ovf(body: str, *, files: str = "", disks: str = "", extra: str = "", ns: str = OVF1) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{ns}" xmlns:ovf="{ns}" xmlns:rasd="{RASD}" xmlns:sasd="{SASD}">
  <References>{files}</References>
  <DiskSection><Info>disks</Info>{disks}</DiskSection>
  {extra}
  <VirtualSystem ovf:id="appliance">
    <Info>vm</Info><Name>appliance</Name>
    <VirtualHardwareSection><Info>hw</Info>
      <Item><rasd:InstanceID>1</rasd:InstanceID><rasd:ResourceType>6</rasd:ResourceType></Item>
      {body}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>""".encode()


def item(kind: int, instance: int, extra: str = "", config: str = "") -> str:
    attribute = f' ovf:configuration="{config}"' if config else ""
    return (
        f"<Item{attribute}><rasd:InstanceID>{instance}</rasd:InstanceID>"
        f"<rasd:ResourceType>{kind}</rasd:ResourceType>{extra}</Item>"
    )


def drive(resource: str, instance: int, config: str = "") -> str:
    extra = f"<rasd:HostResource>{resource}</rasd:HostResource><rasd:Parent>1</rasd:Parent>"
    return item(17, instance, extra, config)


FILE1 = '<File ovf:id="file1" ovf:href="disk1.vmdk" ovf:size="1024"/>'
DISK1 = '<Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="8" ovf:capacityAllocationUnits="byte * 2^30"/>'


# -- deployment options ---------------------------------------------------------------

OPTIONS = """<DeploymentOptionSection><Info>sizes</Info>
  <Configuration ovf:id="small"><Label>Small</Label><Description>2 vCPU</Description></Configuration>
  <Configuration ovf:id="medium" ovf:default="true"><Label>Medium</Label><Description>4</Description></Configuration>
  <Configuration ovf:id="large"><Label>Large</Label><Description>8</Description></Configuration>
</DeploymentOptionSection>"""


def test_the_default_deployment_option_is_described_and_the_others_listed() -> None:
    # Given a vCenter appliance with three sizes, medium marked default, one CPU and
    # memory item per size and a second disk only in the large one
    cpus = "".join(
        item(3, 10 + i, f"<rasd:VirtualQuantity>{n}</rasd:VirtualQuantity>", config)
        for i, (n, config) in enumerate([(2, "small"), (4, "medium"), (8, "large")])
    )
    memory = "".join(
        item(
            4,
            20 + i,
            f"<rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>"
            f"<rasd:VirtualQuantity>{n}</rasd:VirtualQuantity>",
            config,
        )
        for i, (n, config) in enumerate([(2048, "small"), (8192, "medium large")])
    )
    files = FILE1 + '<File ovf:id="file2" ovf:href="disk2.vmdk" ovf:size="1024"/>'
    disks = DISK1 + DISK1.replace("vmdisk1", "vmdisk2").replace("file1", "file2")
    body = cpus + memory + drive("ovf:/disk/vmdisk1", 30) + drive("ovf:/disk/vmdisk2", 31, "large")

    # When it is parsed
    [system] = descriptor.parse("x.ovf", ovf(body, files=files, disks=disks, extra=OPTIONS))

    # Then the medium configuration is described, its items only
    assert system.configuration == "medium"
    assert system.configurations == ["small", "medium", "large"]
    assert system.cpu_sockets * system.cpu_cores == 4
    assert system.memory_mib == 8192
    assert [d.disk_id for d in system.disks] == ["vmdisk1"]
    assert any("'small'" in w and "'large'" in w for w in system.warnings)


def test_without_a_default_the_first_option_is_described() -> None:
    # Given options none of which is marked default
    options = OPTIONS.replace(' ovf:default="true"', "")
    body = item(3, 10, "<rasd:VirtualQuantity>2</rasd:VirtualQuantity>", "small") + item(
        3, 11, "<rasd:VirtualQuantity>4</rasd:VirtualQuantity>", "medium"
    )

    # When parsed / Then the first is active and only its CPU counts
    [system] = descriptor.parse("x.ovf", ovf(body, extra=options))
    assert system.configuration == "small"
    assert system.cpu_sockets * system.cpu_cores == 2


def test_a_disk_attached_once_per_configuration_is_not_attached_twice() -> None:
    # Given the same disk attached by two items of two different configurations
    body = drive("ovf:/disk/vmdisk1", 30, "small") + drive("ovf:/disk/vmdisk1", 31, "medium large")

    # When parsed / Then it is one disk of the active configuration
    [system] = descriptor.parse("x.ovf", ovf(body, files=FILE1, disks=DISK1, extra=OPTIONS))
    assert [d.disk_id for d in system.disks] == ["vmdisk1"]


# -- capacity -------------------------------------------------------------------------

PRODUCT = """<ProductSection ovf:class="com.example"><Info>props</Info>
  <Property ovf:key="data_gb" ovf:type="int" ovf:value="20">
    <Value ovf:value="100" ovf:configuration="large"/>
  </Property>
</ProductSection>"""


@pytest.mark.parametrize(("reference", "active", "expected"), [
    ("${data_gb}", "", 20 * GiB),
    ("${com.example.data_gb}", "", 20 * GiB),
    ("${data_gb}", "large", 100 * GiB),
])  # fmt: skip
def test_capacity_by_property_reference(reference: str, active: str, expected: int) -> None:
    # Given a Cisco-style disk whose capacity names a ProductSection property
    disks = f'<Disk ovf:diskId="data" ovf:capacity="{reference}" ovf:capacityAllocationUnits="byte * 2^30"/>'
    extra = PRODUCT
    if active:
        extra += OPTIONS.replace('ovf:id="large"', 'ovf:id="large" ovf:default="true"').replace(
            ' ovf:id="medium" ovf:default="true"', ' ovf:id="medium"'
        )
    text = ovf(drive("ovf:/disk/data", 30), disks=disks, extra=extra)

    # When parsed / Then the property's value for the active configuration is the size
    [system] = descriptor.parse("x.ovf", text)
    assert system.disks[0].capacity == expected
    assert system.disks[0].file is None  # and it is a blank disk


def test_capacity_naming_an_unknown_property_is_refused() -> None:
    disks = '<Disk ovf:diskId="data" ovf:capacity="${nothere}"/>'
    with pytest.raises(errors.OvfFormatError, match="nothere"):
        descriptor.parse("x.ovf", ovf(drive("ovf:/disk/data", 30), disks=disks))


def test_a_disk_without_capacity_takes_its_image_size_later() -> None:
    # Given a Ganeti-style disk with a file but no capacity
    disks = '<Disk ovf:diskId="disk0" ovf:fileRef="file1" ovf:format="http://www.vmware.com/specifications/vmdk.html#sparse"/>'
    [system] = descriptor.parse("x.ovf", ovf(drive("/disk/disk0", 30), files=FILE1, disks=disks))

    # Then its capacity is unknown, not a reason to refuse the package
    [disk] = system.disks
    assert disk.capacity is None and disk.problem is None


# -- HostResource forms ---------------------------------------------------------------


@pytest.mark.parametrize("resource", ["ovf:/disk/vmdisk1", "/disk/vmdisk1", "ovf:/file/file1"])
def test_host_resource_forms(resource: str) -> None:
    # Given a drive naming its disk by disk id, VirtualBox's short form, or the file id
    [system] = descriptor.parse("x.ovf", ovf(drive(resource, 30), files=FILE1, disks=DISK1))

    # Then the disk is the declared one
    assert [(d.disk_id, d.file) for d in system.disks] == [("vmdisk1", "disk1.vmdk")]


def test_a_file_attached_without_a_disk_entry_is_a_disk_of_unknown_capacity() -> None:
    [system] = descriptor.parse("x.ovf", ovf(drive("ovf:/file/file1", 30), files=FILE1))
    [disk] = system.disks
    assert (disk.disk_id, disk.file, disk.capacity, disk.problem) == (
        "file1", "disk1.vmdk", None, None,
    )  # fmt: skip


def test_ovf2_storage_items_are_disks() -> None:
    body = (
        "<StorageItem><sasd:HostResource>ovf:/disk/vmdisk1</sasd:HostResource>"
        "<sasd:InstanceID>30</sasd:InstanceID><sasd:ResourceType>17</sasd:ResourceType></StorageItem>"
    )
    [system] = descriptor.parse("x.ovf", ovf(body, files=FILE1, disks=DISK1, ns=OVF2))
    assert [d.disk_id for d in system.disks] == ["vmdisk1"]


def test_an_ovirt_direct_lun_is_reported_on_its_disk_not_the_vm() -> None:
    # Given an oVirt VM with one image disk and one direct LUN (no file, no size)
    disks = DISK1 + '<Disk ovf:diskId="lun-3600a098" ovf:disk-interface="VirtIO_SCSI"/>'
    body = drive("ovf:/disk/vmdisk1", 30) + drive("lun-3600a098", 31)
    [system] = descriptor.parse("x.ovf", ovf(body, files=FILE1, disks=disks))

    # Then the image disk is fine and the LUN carries its reason
    assert [d.problem is None for d in system.disks] == [True, False]
    problem = system.disks[1].problem
    assert isinstance(problem, errors.ImageSizeError) and "direct LUN" in problem.problem


def test_a_drive_naming_no_declared_disk_is_that_disks_problem() -> None:
    [system] = descriptor.parse("x.ovf", ovf(drive("ovf:/disk/ghost", 30)))
    [disk] = system.disks
    assert isinstance(disk.problem, errors.MissingFileError)


# -- files the reader cannot take ---------------------------------------------------


@pytest.mark.parametrize(("attrs", "words"), [
    ('ovf:compression="gzip"', "gzip-compressed"),
    ('ovf:chunkSize="1073741824"', "split in chunks"),
    ('ovf:compression="lzma"', "lzma"),
])  # fmt: skip
def test_compressed_and_chunked_files_are_refused_on_their_disk(attrs: str, words: str) -> None:
    files = FILE1.replace("/>", f" {attrs}/>")
    [system] = descriptor.parse(
        "x.ovf", ovf(drive("ovf:/disk/vmdisk1", 30), files=files, disks=DISK1)
    )
    problem = system.disks[0].problem
    assert isinstance(problem, errors.UnsupportedDiskError) and words in problem.problem


def test_a_delta_disk_is_refused_clearly_never_taken_as_full() -> None:
    files = FILE1 + '<File ovf:id="file2" ovf:href="delta.vmdk" ovf:size="1024"/>'
    disks = DISK1 + DISK1.replace("vmdisk1", "delta1").replace("file1", "file2").replace(
        "/>", ' ovf:parentRef="vmdisk1"/>'
    )
    [system] = descriptor.parse(
        "x.ovf", ovf(drive("ovf:/disk/delta1", 30), files=files, disks=disks)
    )
    problem = system.disks[0].problem
    assert isinstance(problem, errors.UnsupportedDiskError) and "parentRef" in problem.problem


# -- limits -----------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return ovf("", extra="<Annotation>" + "<x>" * depth + "</x>" * depth + "</Annotation>")


def test_element_depth_limit() -> None:
    # Given a descriptor nested 40 levels deep
    data = _nested(40)

    # When read with a depth limit below / above it / Then refused / accepted
    with pytest.raises(errors.OvfFormatError, match="max_element_depth"):
        descriptor.parse("x.ovf", data, Limits(max_element_depth=30))
    assert descriptor.parse("x.ovf", data, Limits(max_element_depth=50))


def test_a_very_deep_descriptor_is_refused_by_default_without_exhausting_the_stack() -> None:
    with pytest.raises(errors.OvfFormatError, match="max_element_depth"):
        descriptor.parse("x.ovf", _nested(100_000))


def _collections(depth: int) -> bytes:
    vs = """<VirtualSystem ovf:id="inner"><Info>vm</Info>
      <VirtualHardwareSection><Info>hw</Info></VirtualHardwareSection></VirtualSystem>"""
    body = "<VirtualSystemCollection ovf:id='c'><Info>c</Info>" * depth + vs
    body += "</VirtualSystemCollection>" * depth
    return f'<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}">{body}</Envelope>'.encode()


def test_collection_nesting_limit() -> None:
    # Given a vApp of vApps three deep holding one VM
    data = _collections(3)

    # When read with a nesting limit below / at it / Then refused / the VM is found
    with pytest.raises(errors.OvfFormatError, match="max_collection_nesting"):
        descriptor.parse("x.ovf", data, Limits(max_collection_nesting=2))
    [system] = descriptor.parse("x.ovf", data, Limits(max_collection_nesting=3))
    assert system.id == "inner"


def test_file_reference_length_limit() -> None:
    files = '<File ovf:id="file1" ovf:href="' + "a" * 300 + '"/>'
    with pytest.raises(errors.UnsafeMemberError, match="max_name_length"):
        descriptor.parse("x.ovf", ovf("", files=files), Limits(max_name_length=255))
    assert descriptor.parse("x.ovf", ovf("", files=files), Limits(max_name_length=300))


@pytest.mark.parametrize("encoding", ["x-unknown", "utf-32", "cp037"])
def test_an_unknown_xml_encoding_is_a_rejection_in_one_line(encoding: str) -> None:
    data = ovf("").replace(b'encoding="UTF-8"', f'encoding="{encoding}"'.encode())
    with pytest.raises(errors.OvfFormatError) as caught:
        descriptor.parse("x.ovf", data)
    assert "\n" not in str(caught.value)


def test_limits_come_from_provider_settings() -> None:
    limits = Limits.from_settings({"max_element_depth": "12", "path": "/data"})
    assert limits.max_element_depth == 12 and limits.max_members == Limits().max_members
    with pytest.raises(errors.ProviderError, match="max_members"):
        Limits.from_settings({"max_members": "lots"})
