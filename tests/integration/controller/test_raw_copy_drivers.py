"""Raw copy preflight: libguestfs looks for virtio drivers in the source's boot disk.

The test guest (tests/guest/build_guest.py) has virtio modules under /lib/modules
but none in its initramfs, as a guest installed on VMware: a raw copy of it must
be warned about. The inspection reads the disk through the OVA provider's own NBD
export, as preflight does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ferry.migration_controller import drivers
from ferry.proto.objects import ProviderSpec
from ferry.providers import factory
from ferry.testing.migration import guest_ova

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_test_guest_has_no_virtio_driver_in_its_initramfs(tmp_path: Path) -> None:
    # Given the test guest's OVA in an import area
    area = tmp_path / "ova"
    area.mkdir()
    shutil.copy2(guest_ova(REPO)["ova"], area / "guest.ova")
    provider = factory.create(ProviderSpec(type="ova", url=str(area)))
    (vm,) = await provider.inventory()
    # When preflight inspects its boot disk
    finding = await drivers.inspect(provider, vm, "tcg", 600)
    # Then it found the initramfs, with no virtio block driver in it, and says so
    assert finding == drivers.Finding(False, "no virtio block driver in the guest's initramfs")
    text = drivers.warning(finding)
    assert text is not None and "SATA" in text
