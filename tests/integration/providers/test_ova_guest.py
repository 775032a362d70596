"""The OVA provider on the project's real test guest (a VMware-style OVA), when cached.

The guest is built by tests/guest/build_guest.py (minutes, needs root); this test
only uses a cached build and skips otherwise, so it never triggers a build.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import ModuleType

import pytest

from ferry.proto.inventory import DiskFormat, Firmware
from ferry.providers.ova.provider import OvaProvider
from ferry.testing import guestfiles

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "guest" / "build_guest.py"


def _guest_module() -> ModuleType:
    return guestfiles.load("ferry_test_guest", BUILD_SCRIPT)


@pytest.fixture
def guest_area(tmp_path: Path) -> tuple[Path, Path]:
    """An import directory holding a copy of the cached guest OVA, and its raw disk.

    A copy, not a hard link: the provider refuses hard-linked files, whose bytes
    may belong to a file outside the import area.
    """
    if not BUILD_SCRIPT.exists():
        pytest.skip("tests/guest/build_guest.py is missing")
    guest = _guest_module()
    cache = guest.default_cache_dir()
    current = cache / guest.recipe_hash()[:16]
    # The current recipe's build is preferred; any complete older build serves as
    # well, since what is tested here is the reader, not the recipe.
    builds = [current, *sorted(cache.glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True)]
    complete = [
        e for e in builds if (e / "ferry-test-guest.ova").exists() and (e / "disk.raw").exists()
    ]
    if not complete:
        pytest.skip("test guest not built yet: python tests/guest/build_guest.py")
    ova, raw = complete[0] / "ferry-test-guest.ova", complete[0] / "disk.raw"
    root = tmp_path / "import"
    root.mkdir()
    shutil.copyfile(ova, root / ova.name)
    return root, raw


async def test_real_guest_ova_inventory_and_bytes(guest_area: tuple[Path, Path]) -> None:
    # Given the project's VMware-style guest OVA
    root, raw = guest_area
    provider = OvaProvider(root)

    # When it is inventoried and its disk opened (manifest digest checked on open)
    [vm] = await provider.inventory()
    [disk] = vm.disks
    async with provider.open_disk(vm, disk.id) as reader:
        extents = await reader.extents()
        samples = [(e.offset, min(e.length, 1024 * 1024)) for e in extents[:4]]
        got = [await reader.read(offset, length) for offset, length in samples]
        size = reader.size

    # Then it is a BIOS VM with one streamOptimized disk whose bytes match the raw build
    assert vm.firmware is Firmware.BIOS
    assert disk.format is DiskFormat.VMDK_STREAM
    assert size == disk.capacity == raw.stat().st_size
    assert 0 < sum(e.length for e in extents) < size
    with raw.open("rb") as source:
        for (offset, length), data in zip(samples, got, strict=True):
            source.seek(offset)
            assert data == source.read(length), offset
    assert got[0][510:512] == b"\x55\xaa"  # the MBR boot signature
