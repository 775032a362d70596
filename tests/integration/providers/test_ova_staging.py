"""Flow 3: virt-v2v reads private copies whose manifest digests were checked as they were made.

A package file can be rewritten in place by whoever owns it at any time, so a
digest checked on the import area and a read minutes later by virt-v2v leave a
window. The conversion's input is copied into the run's own work directory and
checked there; these tests change the package after the input was written and
read the disks as virt-v2v would (the same ``json:`` descriptions, by qemu-img).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ovfkit
import pytest
from defusedxml import ElementTree
from hostile_corpus import RAW_URI

from ferry.providers.ova import errors
from ferry.providers.ova.provider import OvaProvider
from ferry.providers.ova.staging import Staged


def _stream_ova(root: Path, images: ovfkit.Images) -> Path:
    stream = images.stream.read_bytes()
    disks = [{"href": "web-disk1.vmdk", "size": len(stream)}]
    path = root / "web.ova"
    ovfkit.write_ova(path, "web.ovf", ovfkit.vmware_ovf(disks), [("web-disk1.vmdk", stream)])
    return path


def _scribble_member(ova: Path, member: str) -> None:
    """Rewrite a member's bytes in place (same file, same size): its owner can."""
    with tarfile.open(ova) as tar:
        info = tar.getmember(member)
    with ova.open("r+b") as f:
        f.seek(info.offset_data + 4096)
        f.write(b"\x99" * (info.size - 8192))


def _filenames(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "filename":
                yield str(value)
            else:
                yield from _filenames(value)


def _read_as_virt_v2v(source: str, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-O", "raw", source, str(out)], check=True)
    return out.read_bytes()


async def test_virt_v2v_reads_the_checked_copy_when_the_package_changes_afterwards(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given an OVA with a manifest, listed, and its conversion input written
    root = tmp_path / "import"
    root.mkdir()
    ova = _stream_ova(root, images)
    provider = OvaProvider(root)
    [vm] = await provider.inventory()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    given = await provider.v2v_input(vm, work)

    # When the disk inside the package is rewritten before virt-v2v reads it
    _scribble_member(ova, "web-disk1.vmdk")

    # Then what virt-v2v reads through the document is the disk whose digest was checked
    domain = ElementTree.fromstring(Path(given.argv[2]).read_bytes())
    [source] = [d.find("source").get("file") for d in domain.iter("disk")]
    assert _read_as_virt_v2v(source, tmp_path / "read.raw") == images.expected
    # And the document names only files of the private work directory, Ferry's alone
    named = list(_filenames(json.loads(source.removeprefix("json:"))))
    assert named and all(Path(n).is_relative_to(work) for n in named)
    assert all(Path(n).stat().st_mode & 0o077 == 0 for n in named)


async def test_a_disk_changed_before_the_conversion_is_refused_by_its_digest(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a listed OVA whose disk is then rewritten in place
    root = tmp_path / "import"
    root.mkdir()
    ova = _stream_ova(root, images)
    provider = OvaProvider(root, verify_digests=False)  # the conversion checks regardless
    [vm] = await provider.inventory()
    _scribble_member(ova, "web-disk1.vmdk")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)

    # When its conversion input is asked for / Then the digest mismatch names the file
    with pytest.raises(errors.ManifestMismatchError, match=r"web-disk1\.vmdk"):
        await provider.v2v_input(vm, work)
    # And no copy of the refused bytes is left for anything to read
    assert not (work / "disks" / "web-disk1.vmdk").exists()


async def test_a_sparse_raw_disk_stays_sparse_in_its_copy(
    tmp_path: Path, images: ovfkit.Images
) -> None:
    # Given a folder package with a raw disk that is mostly zeros
    folder = tmp_path / "import" / "r"
    folder.mkdir(parents=True)
    (folder / "r.raw").write_bytes(images.expected)
    disks = [{"href": "r.raw", "size": ovfkit.SOURCE_SIZE, "format": RAW_URI}]
    (folder / "r.ovf").write_text(ovfkit.vmware_ovf(disks, name="r"))
    provider = OvaProvider(tmp_path / "import")
    [vm] = await provider.inventory()
    loaded = await provider._loaded_for(vm.id)

    # When the disk is staged
    staged = Staged(loaded.package, tmp_path / "stage", loaded.entries)
    copy = staged.locate("r.raw")

    # Then it holds the same bytes in far fewer blocks than its size
    assert copy.path.read_bytes() == images.expected
    assert copy.path.stat().st_blocks * 512 < ovfkit.SOURCE_SIZE // 4


async def test_a_canceled_conversion_input_stops_copying(tmp_path: Path) -> None:
    # Given a folder package with a 128 MiB raw disk of data (about half a second to copy)
    folder = tmp_path / "import" / "big"
    folder.mkdir(parents=True)
    size, block = 128 * ovfkit.MiB, os.urandom(4 * ovfkit.MiB)
    with (folder / "big.raw").open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    disks = [{"href": "big.raw", "size": size, "format": RAW_URI, "capacity": 128}]
    (folder / "big.ovf").write_text(ovfkit.vmware_ovf(disks, name="big"))
    provider = OvaProvider(tmp_path / "import")
    [vm] = await provider.inventory()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)

    # When its conversion input is canceled while the disk is being copied
    task = asyncio.create_task(provider.v2v_input(vm, work))
    copy = work / "disks" / "big.raw"
    while not copy.exists():
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Then the copy stops where it was, short of the whole disk
    await asyncio.sleep(0.3)
    stopped_at = copy.stat().st_size
    await asyncio.sleep(0.3)
    assert copy.stat().st_size == stopped_at < size


def _data_package(root: Path, name: str, size: int) -> None:
    """A folder package whose raw disk is ``size`` bytes of data (nothing to skip)."""
    folder = root / name
    folder.mkdir(parents=True)
    block = os.urandom(ovfkit.MiB)
    with (folder / f"{name}.raw").open("wb") as f:
        for _ in range(size // len(block)):
            f.write(block)
    capacity = size // ovfkit.MiB
    disks = [{"href": f"{name}.raw", "size": size, "format": RAW_URI, "capacity": capacity}]
    (folder / f"{name}.ovf").write_text(ovfkit.vmware_ovf(disks, name=name))


async def test_the_staged_copy_reads_no_byte_of_the_package_before_its_grant(
    tmp_path: Path,
) -> None:
    # Given a package with a 16 MiB disk of data, and a budget that grants the first
    # chunk and then holds
    size = 16 * ovfkit.MiB
    _data_package(tmp_path / "import", "paced", size)
    provider = OvaProvider(tmp_path / "import")
    [vm] = await provider.inventory()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    asked: list[int] = []
    release = asyncio.Event()

    async def pace(nbytes: int) -> None:
        asked.append(nbytes)
        if len(asked) > 1:
            await release.wait()

    # When the conversion input is made under that budget
    task = asyncio.create_task(provider.v2v_input(vm, work, pace=pace))
    copy = work / "disks" / "paced.raw"
    async with asyncio.timeout(10):
        while len(asked) < 2 and not task.done():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)

    # Then the copy holds only what was granted while the budget holds the rest
    held = copy.stat().st_size
    assert held == asked[0] < size
    # And once the budget grants again it completes, every byte asked for first
    release.set()
    given = await task
    assert sum(asked) == size and copy.stat().st_size == size
    assert given.argv[:2] == ["-i", "libvirtxml"]


async def test_a_conversion_canceled_while_its_copy_waits_for_bandwidth_stops(
    tmp_path: Path,
) -> None:
    # Given a package staged under a budget that never grants
    _data_package(tmp_path / "import", "held", 8 * ovfkit.MiB)
    provider = OvaProvider(tmp_path / "import")
    [vm] = await provider.inventory()
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    asked = asyncio.Event()

    async def pace(nbytes: int) -> None:
        asked.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(provider.v2v_input(vm, work, pace=pace))
    await asyncio.wait_for(asked.wait(), 10)

    # When the conversion is canceled / Then it ends, nothing of the disk read
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    copy = work / "disks" / "held.raw"
    assert not copy.exists() or copy.stat().st_size == 0
