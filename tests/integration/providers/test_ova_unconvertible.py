"""A VM virt-v2v cannot convert is refused before any copy, in the user's words.

virt-v2v would launch its appliance, find no operating system (or one it does
not convert) and fail after minutes; whether any disk holds a byte is known from
the files' allocation (``SEEK_DATA``, ``qemu-img map``), and the guest's family
from the descriptor, so the inventory says so as a concern and preflight refuses
the VM.
"""

from __future__ import annotations

from pathlib import Path

import ovfkit
from hostile_corpus import QCOW2_URI, RAW_URI

from ferry.proto.inventory import ConcernCode, Status
from ferry.providers.ova.provider import OvaProvider


def _folder(root: Path, name: str, files: dict[str, int | Path], uri: str) -> None:
    """A folder package; a disk given as a number is a sparse raw file of that size."""
    folder = root / name
    folder.mkdir(parents=True)
    disks = []
    for href, content in files.items():
        with (folder / href).open("wb") as f:
            if isinstance(content, int):
                f.truncate(content)
            else:
                f.write(content.read_bytes())
        disks.append({"href": href, "size": (folder / href).stat().st_size, "format": uri})
    (folder / f"{name}.ovf").write_text(ovfkit.vmware_ovf(disks, name=name))


async def test_only_empty_disks_is_a_concern_and_any_data_is_none(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a VM with a sparse all-zero raw disk, one with an all-zero qcow2, and one
    # whose second disk holds the data
    root = tmp_path / "import"
    zeros = tmp_path / "zeros.raw"
    with zeros.open("wb") as f:
        f.truncate(ovfkit.SOURCE_SIZE)
    empty_qcow2 = tmp_path / "zeros.qcow2"
    ovfkit.run("qemu-img", "convert", "-O", "qcow2", str(zeros), str(empty_qcow2))
    _folder(root, "raw-empty", {"a.raw": ovfkit.SOURCE_SIZE}, RAW_URI)
    _folder(root, "qcow2-empty", {"a.qcow2": empty_qcow2}, QCOW2_URI)
    _folder(root, "data", {"a.qcow2": empty_qcow2, "b.qcow2": images.qcow2}, QCOW2_URI)

    # When listed
    vms = {vm.name: vm for vm in await OvaProvider(root).inventory()}

    # Then the empty ones carry the concern, listed as usable otherwise; the other none
    for name in ("raw-empty", "qcow2-empty"):
        [concern] = vms[name].concerns
        assert concern.code is ConcernCode.UNSUPPORTED and vms[name].status is Status.OK
        assert "no operating system to convert" in concern.message
    assert vms["data"].concerns == []


async def test_a_guest_virt_v2v_cannot_convert_is_a_concern_before_any_copy(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a vCenter export of a FreeBSD guest with a real disk
    root = tmp_path / "import"
    _folder(root, "bsd", {"a.qcow2": images.qcow2}, QCOW2_URI)
    ovf = root / "bsd" / "bsd.ovf"
    ovf.write_text(ovf.read_text().replace("debian11_64Guest", "freebsd64Guest"))

    # When listed / Then it carries the concern preflight refuses it for
    [vm] = await OvaProvider(root).inventory()
    [concern] = vm.concerns
    assert "FreeBSD" in concern.message and "'freebsd64Guest'" in concern.message
