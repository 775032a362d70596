"""Files of an unpacked OVF folder that are someone else's bytes under a clean name.

A hard link, a file swapped after it was checked, or an OVA that is itself a hard
link pass every name-based check; the guarantee is that no byte of the file they
lead to is read. The audit hook records the inode of every file this process
opens, so "never opened" is checked by identity, not by name.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import ovfkit
import pytest

from ferry.providers.ova import errors
from ferry.providers.ova.package import Folder, read_location
from ferry.providers.ova.provider import OvaProvider

RAW_URI = "http://en.wikipedia.org/wiki/Byte"


class InodeAudit:
    """(st_dev, st_ino) of every path this process opens while recording."""

    def __init__(self) -> None:
        self.recording = False
        self.opened: set[tuple[int, int]] = set()
        sys.addaudithook(self.hook)

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.recording and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            try:
                info = os.stat(args[0])
            except OSError:
                return
            self.opened.add((info.st_dev, info.st_ino))


_AUDIT = InodeAudit()


def _canary(tmp_path: Path, images: ovfkit.Images) -> tuple[Path, Path]:
    """A canary that is a perfectly good raw disk, and an empty import area beside it."""
    canary = tmp_path / "canary.raw"
    canary.write_bytes(images.expected)
    root = tmp_path / "import"
    root.mkdir()
    return canary, root


def _raw_ovf(size: int) -> str:
    return ovfkit.vmware_ovf(
        [{"href": "d.img", "size": size, "format": RAW_URI}], name="linked", efi=False
    )


async def test_a_hard_linked_disk_is_refused_and_never_read(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a folder whose disk is a hard link to a canary outside the import area
    canary, root = _canary(tmp_path, images)
    folder = root / "linked"
    folder.mkdir()
    (folder / "linked.ovf").write_text(_raw_ovf(len(images.expected)))
    os.link(canary, folder / "d.img")
    identity = (canary.stat().st_dev, canary.stat().st_ino)

    # When the import area is scanned
    _AUDIT.recording, _AUDIT.opened = True, set()
    try:
        found = await OvaProvider(root).scan()
        vms = await OvaProvider(root).inventory()
    finally:
        _AUDIT.recording = False

    # Then the package is refused as a hard link and the canary was never opened
    error = found.rejected["linked/linked"]
    assert type(error) is errors.UnsafeMemberTypeError
    assert "hard link" in str(error)
    assert vms == []
    assert identity not in _AUDIT.opened


async def test_a_hard_linked_descriptor_or_archive_is_refused(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a descriptor and a whole OVA that are hard links to files outside
    _, root = _canary(tmp_path, images)
    outside_ovf = tmp_path / "elsewhere.ovf"
    outside_ovf.write_text(_raw_ovf(len(images.expected)))
    folder = root / "desc"
    folder.mkdir()
    os.link(outside_ovf, folder / "desc.ovf")
    outside_ova = ovfkit.write_ova(
        tmp_path / "elsewhere.ova",
        "x.ovf",
        _raw_ovf(len(images.expected)),
        [("d.img", images.expected)],
    )
    os.link(outside_ova, root / "archive.ova")

    # When the import area is scanned
    found = await OvaProvider(root).scan()

    # Then both are refused as hard links
    assert {k: type(e) for k, e in found.rejected.items()} == {
        "desc/desc": errors.UnsafeMemberTypeError,
        "archive": errors.UnsafeMemberTypeError,
    }
    assert all("hard link" in str(e) for e in found.rejected.values())


def test_a_file_swapped_for_a_hard_link_after_its_check_is_not_read(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a folder disk located (checked) while it was a plain file
    canary, root = _canary(tmp_path, images)
    (root / "x.ovf").write_text(_raw_ovf(len(images.expected)))
    (root / "d.img").write_bytes(b"\0" * 512)
    location = Folder(root / "x.ovf").locate("d.img")

    # When it is replaced by a hard link to the canary before it is read
    (root / "d.img").unlink()
    os.link(canary, root / "d.img")

    # Then reading it is refused
    with pytest.raises(errors.UnsafeMemberTypeError, match="hard link"):
        read_location(location)


def test_a_file_replaced_by_another_plain_file_is_not_read(tmp_path: Path) -> None:
    # Given a located folder file that is then replaced by a different plain file
    root = tmp_path / "import"
    root.mkdir()
    (root / "x.ovf").write_text("<Envelope/>")
    (root / "d.img").write_bytes(b"a" * 512)
    location = Folder(root / "x.ovf").locate("d.img")
    (root / "d.img").rename(root / "old.img")
    (root / "d.img").write_bytes(b"b" * 512)

    # When it is read / Then the swap is noticed
    with pytest.raises(errors.UnsafeMemberTypeError, match="replaced"):
        read_location(location)


async def test_a_filesystem_mounted_inside_the_import_area_is_refused(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a folder of the import area that is another filesystem's mount point,
    # holding a complete export
    _, root = _canary(tmp_path, images)
    mounted = root / "mounted"
    mounted.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "ferry-test", str(mounted)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mounted / "m.ovf").write_text(_raw_ovf(len(images.expected)))
        (mounted / "d.img").write_bytes(images.expected)

        # When the import area is scanned
        found = await OvaProvider(root).scan()
    finally:
        subprocess.run(["umount", str(mounted)], check=False)

    # Then the package is refused as lying on another filesystem
    error = found.rejected["mounted/m"]
    assert type(error) is errors.UnsafeMemberTypeError
    assert "another filesystem" in str(error)
