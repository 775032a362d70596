"""Fixtures for real conversions: the test guest, its OVA provider, target volumes.

The guest is the project's test guest (tests/guest/build_guest.py): a small
Debian whose initramfs lacks virtio drivers, packaged as a VMware-style OVA.
It is built once and cached; the first run may take a few minutes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ferry.conversion_service.settings import ConversionSettings
from ferry.proto.inventory import Vm
from ferry.providers.ova.provider import OvaProvider
from ferry.testing import guestfiles

BUILD_GUEST = Path(__file__).resolve().parents[2] / "guest" / "build_guest.py"


def _builder() -> ModuleType:
    return guestfiles.load("ferry_test_guest", BUILD_GUEST)


@pytest.fixture(scope="session")
def guest() -> Any:
    for tool in ("virt-v2v", "virt-v2v-in-place", "virt-inspector", "guestfish"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (see the README set-up)")
    return _builder().ensure_guest()


@pytest.fixture
def ova_dir(tmp_path: Path, guest: Any) -> Path:
    folder = tmp_path / "ova"
    folder.mkdir()
    target = folder / Path(guest.ova).name
    # A copy: the provider refuses symlinks and hard links, whose bytes may belong
    # to a file outside the import area.
    shutil.copyfile(guest.ova, target)
    return folder


@pytest.fixture
def provider(ova_dir: Path) -> OvaProvider:
    return OvaProvider(ova_dir)


@pytest.fixture
async def source_vm(provider: OvaProvider) -> Vm:
    (vm,) = await provider.inventory()
    return vm


@pytest.fixture
def settings(tmp_path: Path) -> ConversionSettings:
    # A private work directory, so that what a test finds left behind is its own
    # (other conversions on the machine use the default, the system temp dir).
    work = tmp_path / "work"
    work.mkdir()
    return ConversionSettings(kill_grace_seconds=3.0, work_dir=work)
