"""Helpers of the local platform's volume tests (``test_volumes_local*.py``)."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import time
from pathlib import Path

import msgspec
import psutil

from ferry.platform.copy import checksum, sink
from ferry.platform.images import ImageRef
from ferry.platform.local import transfer, workload
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import LocalSettings
from ferry.platform.volumes import Phase, VolumeRequest, VolumeState
from ferry.proto.inventory import DiskFormat, VolumeMode, VolumeTarget
from ferry.proto.volume import VolumeSource

KiB = 1024
MiB = 1024 * KiB
NS = "ferry-test"
MIG = "mig-1"
VM = "vm-7"


def make_raw(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 3) -> Path:
    rng = random.Random(seed)
    with path.open("wb") as f:
        f.truncate(size)
        for offset, length in extents:
            f.seek(offset)
            f.write(rng.randbytes(length))
    return path


def request(
    disk: str,
    capacity: int,
    source: VolumeSource,
    *,
    storage_class: str = "standard",
    mode: VolumeMode = VolumeMode.FILESYSTEM,
    fmt: str = "raw",
) -> VolumeRequest:
    return VolumeRequest(
        namespace=NS,
        migration=MIG,
        vm=VM,
        vm_name="web server",
        disk_id=disk,
        capacity=capacity,
        source=source,
        target=VolumeTarget(
            disk_id=disk,
            storage_class=storage_class,
            volume_mode=mode,
            access_modes=["ReadWriteOnce"],
            format=fmt,
        ),
    )


def settings(tmp_path: Path, **extra: object) -> LocalSettings:
    return LocalSettings(storage_root=tmp_path / "data", checkpoint_seconds=0.1, **extra)  # type: ignore[arg-type]


def digest_of(path: Path) -> str:
    return checksum.of_bytes(path.read_bytes())


def data_digest(state: VolumeState) -> str:
    """The digest of what the volume holds, read back through qemu-img (any format)."""
    raw = Path(state.path).with_name("readback.raw")
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", state.format, "-O", "raw", state.path, str(raw)],
        check=True,
    )
    try:
        return checksum.of_bytes(raw.read_bytes()[: state.capacity])
    finally:
        raw.unlink()


async def wait_for_child(module: str, timeout: float = 20) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process().children(recursive=True):
            try:
                if module in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no {module} child")


async def wait_for_watermark(platform: LocalVolumes, volume: VolumeState, at_least: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        current = await platform.get_volume(NS, volume.name)
        if current is not None and current.pv:
            path = platform.store.copy_dir(current) / "copy.json"
            try:
                mark = int(msgspec.json.decode(path.read_bytes())["watermark"])
            except (FileNotFoundError, msgspec.DecodeError):
                mark = 0
            if mark >= at_least:
                return mark
        await asyncio.sleep(0.02)
    raise TimeoutError("no checkpoint")


def start_populator(
    platform: LocalVolumes, volume: VolumeState, src: Path, pause: str
) -> subprocess.Popen[bytes]:
    job = workload.job_bytes(platform.job(volume, ImageRef(path=str(src))))
    env = {**os.environ, transfer.FAULT_PAUSE_ENV: pause}
    proc = subprocess.Popen(
        workload.command(platform.settings, "populator"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(job)
    proc.stdin.close()
    return proc


def wait_stopped_at(proc: subprocess.Popen[bytes], stage: str) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = msgspec.json.decode(raw)
        if line.get("event") == "stage" and line["stage"] == stage:
            break
    else:
        raise AssertionError(f"populator ended before stage {stage}")
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_STOPPED:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def assert_old_or_new(state: VolumeState | None, expected: str) -> str:
    """Never half-bound: either unbound, or bound to complete, verified data."""
    assert state is not None
    if not state.pv:
        assert state.phase != Phase.SUCCEEDED and state.copy is None
        return "old"
    assert state.phase == Phase.SUCCEEDED and state.copy is not None
    assert data_digest(state) == expected
    return "new"


async def wait_prime_bound(platform: LocalVolumes, volume: VolumeState) -> VolumeState:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        prime = await platform.get_volume(NS, transfer.prime_name(volume.name))
        if prime is not None and prime.pv:
            return prime
        await asyncio.sleep(0.02)
    raise TimeoutError("prime never bound")


# -- the copy engine's tests ------------------------------------------------------------


def convert(src: Path, src_fmt: str, dst: Path, dst_fmt: str, *opts: str) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", src_fmt, "-O", dst_fmt, *opts, str(src), str(dst)],
        check=True,
    )
    return dst


def reference_digest(image: Path, fmt: str, tmp: Path) -> str:
    """The digest by definition, of what qemu-img itself reads from the image."""
    raw = convert(image, fmt, tmp / f"ref-{image.name}.raw", "raw")
    return checksum.of_bytes(raw.read_bytes())


def allocated_bytes(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def new_target(path: Path, fmt: str, size: int) -> sink.DiskSink:
    if fmt == "qcow2":
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", str(path), str(size)], check=True
        )
    return sink.open_sink(str(path), fmt, size)


LAYOUT = [(0, 64 * KiB), (3 * MiB + 4096, 1500 * KiB), (9 * MiB, 3 * MiB), (19 * MiB, 700)]


SIZE = 20 * MiB


def source_in(fmt: DiskFormat, raw: Path, tmp: Path) -> Path:
    if fmt == DiskFormat.RAW:
        return raw
    if fmt == DiskFormat.QCOW2:
        return convert(raw, "raw", tmp / "disk.qcow2", "qcow2")
    if fmt == DiskFormat.VMDK_STREAM:
        return convert(raw, "raw", tmp / "disk.vmdk", "vmdk", "-o", "subformat=streamOptimized")
    if fmt == DiskFormat.VMDK_FLAT:
        return convert(raw, "raw", tmp / "flat.vmdk", "vmdk", "-o", "subformat=monolithicFlat")
    raise AssertionError(fmt)


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)
