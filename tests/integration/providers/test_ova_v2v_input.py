"""Ferry's reading of a package drives virt-v2v: ``-i libvirtxml`` over the checked disks.

virt-v2v's own ``-i ova`` found no disk in a VirtualBox export Ferry listed
correctly; here virt-v2v is handed Ferry's description and asked to print the
source it sees (``--print-source``, which sets the disks up without converting).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import ovfkit
import pytest
from defusedxml import ElementTree

from ferry.providers.ova import errors
from ferry.providers.ova.provider import OvaProvider


def _virtualbox_with_blank_disk(root: Path, images: ovfkit.Images) -> None:
    stream = images.stream.read_bytes()
    ovf = ovfkit.virtualbox_ovf("vb-disk001.vmdk", len(stream), ovfkit.SOURCE_SIZE)
    ovf = ovf.replace(
        "</DiskSection>",
        '<Disk ovf:capacity="4194304" ovf:diskId="data"/></DiskSection>',
    ).replace(
        "</VirtualHardwareSection>",
        "<Item><rasd:HostResource>/disk/data</rasd:HostResource><rasd:InstanceID>99"
        "</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>"
        "</VirtualHardwareSection>",
    )
    ovfkit.write_ova(root / "vb.ova", "vb.ovf", ovf, [("vb-disk001.vmdk", stream)])


async def test_virt_v2v_sees_the_disks_the_inventory_promised(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a VirtualBox export with a SATA disk and a blank data disk
    if shutil.which("virt-v2v") is None:
        pytest.skip("virt-v2v is not installed")
    root = tmp_path / "import"
    root.mkdir()
    _virtualbox_with_blank_disk(root, images)
    provider = OvaProvider(root)
    [vm] = await provider.inventory()
    work = tmp_path / "work"
    work.mkdir()

    # When its virt-v2v input is written and virt-v2v reads it
    given = await provider.v2v_input(vm, work)
    shown = subprocess.run(
        ["virt-v2v", *given.argv, "--print-source"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Then it is a libvirt document in the work directory naming no driver type
    assert given.argv[:2] == ["-i", "libvirtxml"] and given.files == [given.argv[2]]
    assert Path(given.argv[2]).parent == work
    domain = ElementTree.fromstring(Path(given.argv[2]).read_bytes())
    sources = [d.find("source").get("file") for d in domain.iter("disk")]
    assert len(sources) == len(vm.disks) == 2
    assert all(s.startswith("json:") for s in sources)
    assert '"null-co"' in sources[1]
    assert not [d for d in domain.iter("disk") if d.find("driver") is not None]
    # And virt-v2v sees both disks, the VM's name, firmware and NICs
    assert shown.returncode == 0, shown.stderr
    assert "source name: debian12" in shown.stdout
    assert "firmware: uefi" in shown.stdout
    disks = shown.stdout.split("disks:")[1].split("removable media:")[0]
    assert len(disks.split()) == 4  # "0 [sata]" and "1 [sata]"
    assert "08:00:27:1a:2b:3c" in shown.stdout


async def test_a_vm_with_an_unusable_disk_gets_no_virt_v2v_input(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a listed VM whose disk file is missing
    root = tmp_path / "import"
    folder = root / "half"
    folder.mkdir(parents=True)
    ovf = ovfkit.vmware_ovf([{"href": "a.vmdk", "size": 1024}], name="half")
    (folder / "half.ovf").write_text(ovf)
    provider = OvaProvider(root)
    [package] = await provider.packages()

    # When its conversion input is asked for / Then the disk's reason is raised
    with pytest.raises(errors.MissingFileError):
        await provider.v2v_input(package.vms[0], tmp_path)
