"""Helpers of the conversion tests: target volumes, process checks, guest contents."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import psutil

from ferry.platform import factory
from ferry.platform.settings import PlatformSettings
from ferry.platform.volumes import VolumeRequest
from ferry.proto.inventory import Vm, Volume, VolumeTarget
from ferry.proto.volume import VolumeSource
from ferry.testing import guestfiles

OVERHEAD = 64 << 20  # what a platform adds to a volume for filesystem overhead
HELPERS = ("virt-v2v", "virt-v2v-in-place", "nbdkit", "qemu-nbd", "qemu-system", "nbdcopy")


def blank_volumes(folder: Path, vm: Vm) -> list[Volume]:
    """Pre-allocated raw target files, as the local platform binds them (sparse).

    The file holds the guest disk (capacity); the volume's requested size adds the
    filesystem overhead the storage needs around it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    volumes = []
    for index, disk in enumerate(vm.disks):
        path = folder / f"{vm.name}-disk-{index}.img"
        with path.open("wb") as handle:
            handle.truncate(disk.capacity)
        volumes.append(
            Volume(
                disk_id=disk.id,
                name=f"{vm.name}-disk-{index}",
                size=disk.capacity + OVERHEAD,
                capacity=disk.capacity,
                path=str(path),
                format="raw",
                phase="Bound",
            )
        )
    return volumes


async def platform_volumes(
    data_dir: Path, vm: Vm, *, migration: str = "mig-1", vm_key: str = "vm-1"
) -> list[Volume]:
    """Blank volumes made and bound by the local platform, as the volume-service would:
    the conversion-service takes their paths from these records, not from the command."""
    platform = factory.create(PlatformSettings(), data_dir=data_dir)
    for disk in vm.disks:
        await platform.ensure_volume(
            VolumeRequest(
                namespace="default",
                migration=migration,
                vm=vm_key,
                vm_name=vm.name,
                disk_id=disk.id,
                capacity=disk.capacity,
                target=VolumeTarget(disk_id=disk.id, storage_class="local"),
                source=VolumeSource.BLANK,
            )
        )
    bound = await platform.bind_volumes("default", migration, vm_key)
    order = {disk.id: index for index, disk in enumerate(vm.disks)}
    return [v.to_proto() for v in sorted(bound, key=lambda v: order[v.disk_id])]


def initramfs_modules(disk: str, env: dict[str, str], pattern: str = "virtio") -> list[str]:
    """Kernel modules matching ``pattern`` inside the guest's initramfs (read-only).

    ``env`` is the converter's libguestfs environment (KVM or TCG, as detected).
    """
    result = subprocess.run(
        [
            "guestfish",
            "--ro",
            "--format=raw",
            "-a",
            disk,
            "-i",
            "sh",
            f"lsinitramfs /boot/initrd.img-* | grep -E '{pattern}' || true",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return sorted(Path(line).name for line in result.stdout.split() if line.endswith(".ko"))


def helpers_running() -> list[str]:
    """virt-v2v's helpers among this test process's descendants."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            name = " ".join(child.cmdline()[:1]) or child.name()
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if any(helper in name for helper in HELPERS):
            found.append(f"{child.pid} {name}")
    return found


def load_converted_guest() -> ModuleType:
    """tests/guest/converted_guest.py (tests/ is not a package), under the name the other
    tests that use it load it by, so that one module object serves them all."""
    path = Path(__file__).resolve().parents[2] / "guest" / "converted_guest.py"
    return guestfiles.load("ferry_converted_guest", path)
