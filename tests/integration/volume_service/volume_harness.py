"""Real OVAs, real commands, and a look at the audit stream for the volume-service tests.

Every OVA is built here: a raw disk with random data in some ranges (holes
elsewhere), converted by qemu-img to a streamOptimized VMDK, described by the
VMware-shaped OVF of the provider tests' ``ovfkit`` and packed with tarfile.
The raw disk stays beside it so a test can compare the copied bytes with it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry.bus import Bus
from ferry.platform.copy import engine
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.proto import subjects, volume
from ferry.proto.base import Message
from ferry.proto.inventory import ProviderType, Vm, VolumeMode, VolumeTarget
from ferry.proto.subjects import Service
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.ova.provider import OvaProvider
from ferry.testing.bus import eventually, stream_count

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "providers"))

import ovfkit

MiB = 1024 * 1024
NS = "ferry-test"
PLAN = "plan-1"
RAW_URI = "http://en.wikipedia.org/wiki/Byte"


ServiceFactory = Callable[..., AbstractAsyncContextManager[Any]]
"""``async with volume_service(**volume_settings) as settings``: the service runs inside."""


@dataclass(frozen=True)
class Ova:
    """One OVA in its import directory, the raw content of each disk, its inventory."""

    folder: Path
    path: Path
    raws: list[Path]
    vm: Vm

    @property
    def raw(self) -> Path:
        return self.raws[0]


def make_raw(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 7) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as out:
        out.truncate(size)
        for offset, length in extents:
            out.seek(offset)
            out.write(rng.randbytes(length))
    return path


def half_full(size: int) -> list[tuple[int, int]]:
    """Data in every other MiB: about half the disk, holes in between."""
    return [(offset, MiB) for offset in range(0, size, 2 * MiB)]


async def make_ova(
    folder: Path,
    name: str = "web01",
    size: int = 32 * MiB,
    seed: int = 7,
    *,
    raw: bool = False,
    disks: int = 1,
) -> Ova:
    """An OVA whose disks are streamOptimized VMDKs (or, with ``raw``, raw bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    work = folder.parent / f"{name}-build"
    work.mkdir(parents=True, exist_ok=True)
    sources, members, described = [], [], []
    for index in range(1, disks + 1):
        source = make_raw(work / f"{name}-{index}.raw", size, half_full(size), seed + index)
        if raw:
            href, data, uri = f"{name}-disk{index}.img", source.read_bytes(), RAW_URI
        else:
            vmdk = work / f"{name}-disk{index}.vmdk"
            subprocess.run(
                [
                    *("qemu-img", "convert", "-f", "raw", "-O", "vmdk"),
                    *("-o", "subformat=streamOptimized", str(source), str(vmdk)),
                ],
                check=True,
                capture_output=True,
            )
            href, data, uri = f"{name}-disk{index}.vmdk", vmdk.read_bytes(), ovfkit.STREAM_URI
        sources.append(source)
        members.append((href, data))
        described.append({"href": href, "size": len(data), "capacity": size // MiB, "format": uri})
    ovf = ovfkit.vmware_ovf(described, name=name, efi=False)
    path = ovfkit.write_ova(folder / f"{name}.ova", f"{name}.ovf", ovf, members)
    (vm,) = [v for v in await OvaProvider(folder).inventory() if v.name == name]
    return Ova(folder=folder, path=path, raws=sources, vm=vm)


def source_ref(ova: Ova) -> SourceRef:
    return SourceRef(provider="ova-local", type=ProviderType.OVA, url=str(ova.folder))


def targets(
    vm: Vm,
    storage_class: str = "standard",
    mode: VolumeMode = VolumeMode.FILESYSTEM,
    fmt: str = "raw",
) -> list[VolumeTarget]:
    return [
        VolumeTarget(disk_id=d.id, storage_class=storage_class, volume_mode=mode, format=fmt)
        for d in vm.disks
    ]


def create(
    ova: Ova,
    source: VolumeSource,
    *,
    migration: str = "mig-1",
    vm: str = "vm-1",
    attempt: int = 1,
    storage_class: str = "standard",
    fmt: str = "raw",
) -> volume.CreateVolumes:
    return volume.CreateVolumes(
        plan=PLAN,
        migration=migration,
        vm=vm,
        step="CreateDataVolumes",
        attempt=attempt,
        namespace=NS,
        source=source,
        provider=source_ref(ova),
        inventory=ova.vm,
        targets=targets(ova.vm, storage_class, fmt=fmt),
    )


def allocate(migration: str = "mig-1", vm: str = "vm-1") -> volume.AllocateDisks:
    return volume.AllocateDisks(
        plan=PLAN, migration=migration, vm=vm, step="AllocateDisks", namespace=NS
    )


def copy(
    ova: Ova, *, migration: str = "mig-1", vm: str = "vm-1", attempt: int = 1
) -> volume.CopyDisks:
    return volume.CopyDisks(
        plan=PLAN,
        migration=migration,
        vm=vm,
        step="CopyDisks",
        attempt=attempt,
        namespace=NS,
        provider=source_ref(ova),
        inventory=ova.vm,
    )


def cleanup(
    *, all_volumes: bool, migration: str = "mig-1", vm: str = "vm-1", attempt: int = 1
) -> volume.CleanupVolumes:
    return volume.CleanupVolumes(
        plan=PLAN,
        migration=migration,
        vm=vm,
        step="Cleanup",
        attempt=attempt,
        namespace=NS,
        all_volumes=all_volumes,
    )


async def events(bus: Bus) -> list[Message]:
    return [message async for _, message in bus.events(follow=False)]


async def wait_for(
    bus: Bus,
    kind: type[Message] | tuple[type[Message], ...],
    count: int = 1,
    within: float = 60,
    failures_seen: int = 0,
) -> list[Message]:
    """Every event of ``kind`` once there are ``count`` of them; fails fast on a
    failure event beyond the ``failures_seen`` the test already expects."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        found = await events(bus)
        matching = [m for m in found if isinstance(m, kind)]
        failed = [m for m in found if isinstance(m, volume.VolumeFailed)]
        if len(matching) >= count:
            return matching
        if len(failed) > failures_seen and not _wants_failure(kind):
            raise AssertionError(f"the volume-service failed: {failed}")
        if loop.time() > deadline:
            raise AssertionError(f"{count} of {kind} not seen within {within}s; events: {found}")
        await asyncio.sleep(0.1)


async def handled(bus: Bus, within: float = 60) -> None:
    """Wait until the volume-service's work queue is empty: every command was acked."""
    stream = subjects.command_stream(Service.VOLUME)

    async def empty() -> bool:
        return await stream_count(bus, stream) == 0

    await eventually(empty, within=within, what=f"{stream} drained")


def _wants_failure(kind: type[Message] | tuple[type[Message], ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return volume.VolumeFailed in kinds


def tree_digest(raw: Path) -> str:
    """The data path's tree digest of a raw file, computed independently of any copy."""
    src = open_source(ImageRef(path=str(raw)))
    try:
        return engine.digest(src).digest
    finally:
        src.close()


def sha256_prefix(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        left = size
        while left:
            chunk = fh.read(min(left, 4 * MiB))
            if not chunk:
                break
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()
