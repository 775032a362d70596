"""Small OVAs as vSphere exports them, for runs where the disk's bytes matter, not its OS.

Raw copy moves a disk unchanged, so a chaos or fault run needs many VMs whose
disks are quick to copy and whose checksums can be compared, not a bootable
guest: each disk here is seeded data (every other MiB, holes between) as a
streamOptimized VMDK, in a ustar OVA with its OVF and SHA256 manifest, laid out
as ovftool writes it (descriptor, manifest, disk).
"""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
CONVERT = ("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized")
OVF = "http://schemas.dmtf.org/ovf/envelope/1"
CIM = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2"
STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"


@dataclass(frozen=True)
class SmallOva:
    path: Path
    raw: Path  # the disk's guest bytes, to compare a copy against
    vm_id: str  # as the OVA provider names it: <file stem>/<VirtualSystem id>


def _raw(path: Path, size: int, seed: int) -> Path:
    rng = random.Random(seed)  # noqa: S311 (test data, reproducible by seed)
    with path.open("wb") as out:
        out.truncate(size)
        for offset in range(0, size, 2 * MiB):
            out.seek(offset)
            out.write(rng.randbytes(MiB))
    return path


def _ovf(name: str, disk: str, disk_size: int, capacity_mib: int) -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{OVF}" xmlns:ovf="{OVF}" xmlns:rasd="{CIM}/CIM_ResourceAllocationSettingData"
    xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="{CIM}/CIM_VirtualSystemSettingData">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity_mib}" ovf:capacityAllocationUnits="byte * 2^20"
      ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="{STREAM}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A virtual machine</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>The kind of installed guest operating system</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-13</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>1 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>256MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>256</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SCSI controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>7</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="bios"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def make(folder: Path, name: str, size_mib: int = 16, seed: int = 1) -> SmallOva:
    """``<folder>/<name>.ova`` holding one VM ``name`` with one seeded ``size_mib`` disk."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f"{folder.name}-build"
    work.mkdir(parents=True, exist_ok=True)
    raw = _raw(work / f"{name}.raw", size_mib * MiB, seed)
    vmdk = work / f"{name}-disk1.vmdk"
    subprocess.run(
        [*CONVERT, str(raw), str(vmdk)],
        check=True,
        capture_output=True,
    )
    disk = vmdk.read_bytes()
    ovf = _ovf(name, vmdk.name, len(disk), size_mib).encode()
    files = [(f"{name}.ovf", ovf), (vmdk.name, disk)]
    mf = "".join(f"SHA256({n})= {hashlib.sha256(d).hexdigest()}\n" for n, d in files).encode()
    path = folder / f"{name}.ova"
    _tar(path, [files[0], (f"{name}.mf", mf), files[1]])
    vmdk.unlink()
    return SmallOva(path=path, raw=raw, vm_id=f"{name}/{name}")
