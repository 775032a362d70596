"""OVA inventory of real-shaped VMware, VirtualBox and oVirt exports with real disks."""

from __future__ import annotations

from pathlib import Path

import ovfkit
import pytest

from ferry.proto.inventory import DiskFormat, Firmware, PowerState, ProviderType
from ferry.proto.volume import SourceRef
from ferry.providers import factory
from ferry.providers.base import ProviderError, VmNotFound
from ferry.providers.ova import errors
from ferry.providers.ova.provider import STORAGE, OvaProvider

MiB = ovfkit.MiB


@pytest.fixture
def area(tmp_path: Path, images: ovfkit.Images) -> Path:
    """An import directory with one export from each of the three exporters."""
    root = tmp_path / "import"
    root.mkdir()
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf(
        [
            {"href": "web01-disk1.vmdk", "size": len(stream)},
            {
                "href": "web01-disk2.vmdk",
                "size": len(stream),
                "capacity": 1,
                "units": "byte * 2^30",
            },
        ],
        macs=("00:50:56:8a:12:34", "00:50:56:8a:56:78"),
    )
    files = [("web01-disk1.vmdk", stream), ("web01-disk2.vmdk", stream)]
    ovfkit.write_ova(root / "web01.ova", "web01.ovf", ovf, files)
    vbox = ovfkit.virtualbox_ovf("debian12-disk001.vmdk", len(stream), ovfkit.SOURCE_SIZE)
    ovfkit.write_ova(
        root / "debian12.ova",
        "debian12.ovf",
        vbox,
        [("debian12-disk001.vmdk", stream)],
        algorithm="SHA1",
        vbox=True,
    )
    qcow2 = images.qcow2.read_bytes()
    ovirt = ovfkit.ovirt_ovf("8d1a5d63-img", "c2bbc3c6-grp", len(qcow2), 1)
    ovfkit.write_ova(root / "rhel9.ova", "vm.ovf", ovirt, [("c2bbc3c6-grp/8d1a5d63-img", qcow2)])
    return root


async def test_vmware_export_is_read_as_vsphere_describes_it(area: Path) -> None:
    # Given an ovftool-style OVA with two streamOptimized disks, two NICs and EFI
    provider = OvaProvider(area)

    # When the VM is looked up by its stable id
    vm = await provider.vm("web01/web01")

    # Then hardware, firmware, disks and NICs are what the descriptor states
    assert vm.provider_type is ProviderType.OVA
    assert vm.name == "web01"
    assert vm.power_state is PowerState.OFF
    assert (vm.firmware, vm.secure_boot) == (Firmware.UEFI, True)
    assert (vm.cpu_sockets, vm.cpu_cores, vm.memory_mib) == (2, 2, 4096)
    assert vm.guest_os == "debian11_64Guest"
    assert [d.id for d in vm.disks] == ["vmdisk1", "vmdisk2"]
    assert [d.capacity for d in vm.disks] == [8 * MiB, 1024 * MiB]
    assert {d.format for d in vm.disks} == {DiskFormat.VMDK_STREAM}
    assert {d.bus for d in vm.disks} == {"scsi"}
    assert vm.disks[0].allocated == 327680
    assert [(n.mac, n.network, n.model) for n in vm.nics] == [
        ("00:50:56:8a:12:34", "VM Network", "vmxnet3"),
        ("00:50:56:8a:56:78", "VM Network", "vmxnet3"),
    ]
    assert vm.warnings == []


async def test_virtualbox_export_takes_macs_and_firmware_from_its_own_section(area: Path) -> None:
    # Given a VirtualBox OVF 1.0 OVA whose MACs live only in vbox:Machine
    provider = OvaProvider(area)

    # When it is found by name
    vm = await provider.vm("debian12")

    # Then the enabled adapters' MACs land on the NICs, in slot order
    assert vm.id == "debian12/debian12"
    assert vm.firmware is Firmware.UEFI
    assert (vm.cpu_sockets, vm.cpu_cores, vm.memory_mib) == (2, 1, 2048)
    assert vm.guest_os == "Debian12_64"
    assert [(n.mac, n.network, n.model) for n in vm.nics] == [
        ("08:00:27:1a:2b:3c", "NAT", "e1000"),
        ("08:00:27:4d:5e:6f", "Bridged", "virtio"),
    ]
    assert [(d.capacity, d.format, d.bus) for d in vm.disks] == [
        (ovfkit.SOURCE_SIZE, DiskFormat.VMDK_STREAM, "sata")
    ]


async def test_ovirt_export_uses_volume_format_topology_and_bios_type(area: Path) -> None:
    # Given an oVirt OVA: typed Sections, a COW volume under imageGroup/imageId, BiosType 3
    provider = OvaProvider(area)

    # When the inventory is taken
    vm = await provider.vm("rhel9/out")

    # Then the qcow2 disk, the CPU topology, the MAC and UEFI are recognised
    assert vm.name == "rhel9"
    assert (vm.cpu_sockets, vm.cpu_cores, vm.cpu_threads) == (2, 1, 2)
    assert vm.memory_mib == 2048
    assert vm.firmware is Firmware.UEFI
    assert vm.guest_os == "rhel_9x64"
    [disk] = vm.disks
    assert (disk.id, disk.format, disk.capacity, disk.bus, disk.boot_order) == (
        "8d1a5d63-img",
        DiskFormat.QCOW2,
        1024**3,
        "scsi",
        1,
    )
    [nic] = vm.nics
    assert (nic.mac, nic.network, nic.model) == ("56:6f:1a:2b:00:07", "ovirtmgmt", "virtio")


async def test_virtualbox_ovf2_folder_is_inventoried(tmp_path: Path, images: ovfkit.Images) -> None:
    # Given an unpacked VirtualBox OVF 2.0 folder (epasd/sasd items) without EFI
    root = tmp_path / "import"
    folder = root / "deb-folder"
    folder.mkdir(parents=True)
    stream = images.stream.read_bytes()
    (folder / "debian12-disk001.vmdk").write_bytes(stream)
    ovf = ovfkit.virtualbox_ovf(
        "debian12-disk001.vmdk", len(stream), ovfkit.SOURCE_SIZE, version=2, efi=False
    )
    (folder / "debian12.ovf").write_text(ovf)

    # When the directory is scanned
    [vm] = await OvaProvider(root).inventory()

    # Then the folder's VM is there with its NICs and disk
    assert vm.id == "deb-folder/debian12/debian12"
    assert vm.firmware is Firmware.BIOS
    assert [n.mac for n in vm.nics] == ["08:00:27:1a:2b:3c", "08:00:27:4d:5e:6f"]
    assert [(d.format, d.bus) for d in vm.disks] == [(DiskFormat.VMDK_STREAM, "sata")]


async def test_inventory_lists_every_package_with_stable_ids(area: Path) -> None:
    # Given the three exports
    # When two independent providers take the inventory
    first = await OvaProvider(area).inventory()
    second = await OvaProvider(area).inventory()

    # Then the same VMs come back under the same ids
    assert [vm.id for vm in first] == ["debian12/debian12", "rhel9/out", "web01/web01"]
    assert first == second
    # ...and every disk is on the one OVA storage a StorageMap names
    assert {d.storage for vm in first for d in vm.disks} == {STORAGE} == {"ova"}


async def test_unknown_vm_is_a_clear_not_found(area: Path) -> None:
    # Given the exports
    provider = OvaProvider(area)

    # When a VM that does not exist is asked for
    with pytest.raises(VmNotFound) as caught:
        await provider.vm("nope")

    # Then the error names it and lists what exists
    assert "'nope'" in str(caught.value)
    assert "web01/web01" in str(caught.value)


async def test_power_operations_are_no_ops_reporting_off(area: Path) -> None:
    # Given an OVA VM
    provider = OvaProvider(area)
    vm = await provider.vm("web01/web01")

    # When it is shut down and powered on
    forced = await provider.shutdown(vm, timeout=1.0)
    await provider.power_on(vm)

    # Then nothing was forced and it still reports off
    assert forced is False
    assert await provider.power_state(vm) is PowerState.OFF


async def test_virt_v2v_input_names_private_copies_and_no_secret(
    area: Path, tmp_path: Path
) -> None:
    # Given an OVA VM
    provider = OvaProvider(area)
    vm = await provider.vm("web01/web01")

    # When virt-v2v's input is asked for
    v2v = await provider.v2v_input(vm, tmp_path)

    # Then it is Ferry's own description of the VM, written in the work directory
    document = tmp_path / "source.xml"
    assert v2v.argv == ["-i", "libvirtxml", str(document)]
    assert v2v.files == [str(document)]
    # naming the checked copies of the disks in it, never the package in the import area
    assert str(tmp_path / "disks") in document.read_text()
    assert str(area) not in document.read_text()


async def test_factory_builds_the_ova_provider_from_a_source_ref(area: Path) -> None:
    # Given a SourceRef as commands carry it, with a file:// URL
    ref = SourceRef(provider="share", type=ProviderType.OVA, url=f"file://{area}")

    # When the factory builds it
    provider = factory.create(ref, None)
    await provider.check()

    # Then it is a working OVA provider over that directory
    vms = await provider.inventory()
    assert vms[0].id == "debian12/debian12"


async def test_manifest_mismatch_of_the_descriptor_rejects_the_package(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given an OVA whose manifest digest of the .ovf is wrong
    root = tmp_path / "import"
    root.mkdir()
    stream = images.stream.read_bytes()
    ovf = ovfkit.vmware_ovf([{"href": "d.vmdk", "size": len(stream)}])
    members = [("web01.ovf", ovf.encode()), ("d.vmdk", stream)]
    good = ovfkit.manifest(members[1:])
    bad = b"SHA256(web01.ovf)= " + b"0" * 64 + b"\n" + good
    (root / "web01.ova").write_bytes(ovfkit.tar_bytes([members[0], ("web01.mf", bad), members[1]]))

    # When the package is loaded
    with pytest.raises(errors.ManifestMismatchError) as caught:
        await OvaProvider(root).load(root / "web01.ova")

    # Then the error names the file whose digest differs
    assert "web01.ovf" in str(caught.value)


async def test_check_reports_a_missing_directory(tmp_path: Path) -> None:
    # Given a provider over a directory that does not exist
    provider = OvaProvider(tmp_path / "gone")

    # When it is checked, or its inventory asked for
    # Then both fail with a provider error naming the directory
    with pytest.raises(ProviderError, match="gone"):
        await provider.check()
    with pytest.raises(ProviderError, match="gone"):
        await provider.inventory()


async def test_a_changed_package_is_checked_again(area: Path, images: ovfkit.Images) -> None:
    # Given a provider that has already accepted web01.ova
    provider = OvaProvider(area)
    vm = await provider.vm("web01/web01")

    # When the file is replaced by a symlink to somewhere else
    (area / "web01.ova").unlink()
    (area / "web01.ova").symlink_to(images.stream)

    # Then opening its disk re-checks the package and refuses it
    with pytest.raises(errors.UnsafeMemberTypeError):
        async with provider.open_disk(vm, "vmdisk1"):
            pass
