"""Volume semantics of the local platform, on real files and real workload processes.

Each test drives :class:`LocalVolumes` the way the volume-service will, and
checks what is on disk: claim records, data files, digests. Crashes are real:
the workload is a child process and is killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import psutil
import pytest
from pydantic import ValidationError

from ferry.platform import durable, errors, factory, volumes
from ferry.platform.base import Platform
from ferry.platform.copy import checksum
from ferry.platform.images import ImageRef
from ferry.platform.local import transfer, workload
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import LocalSettings, PlatformSettings
from ferry.platform.volumes import Phase, VolumeRequest, VolumeState
from ferry.proto import label
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


@pytest.fixture
def platform(tmp_path: Path) -> LocalVolumes:
    return LocalVolumes(settings(tmp_path))


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return make_raw(tmp_path / "src.raw", 24 * MiB, [(MiB, 3 * MiB), (17 * MiB, 2 * MiB + 5)])


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


# -- DataVolume with an importer -------------------------------------------------------


async def test_importer_datavolume_imports_verifies_and_is_found_again(
    platform: LocalVolumes, disk: Path
) -> None:
    # Given an importer DataVolume for a 24 MiB disk
    volume = await platform.ensure_volume(request("d0", 24 * MiB, VolumeSource.IMPORTER))
    assert volume.phase == Phase.PENDING and not volume.path
    reports: list[volumes.TransferProgress] = []
    # When the importer workload streams the disk in
    copy = await platform.import_disk(volume, ImageRef(path=str(disk)), reports.append)
    # Then the copy is verified against the source and recorded on the volume
    assert copy.source.digest == copy.target.digest == digest_of(disk)
    assert copy.volume == volume.name and copy.disk_id == "d0"
    done = await platform.get_volume(NS, volume.name)
    assert done is not None and done.phase == Phase.SUCCEEDED and done.copy == copy
    assert data_digest(done) == digest_of(disk)
    # And progress reached the allocated total
    assert reports and reports[-1].done == reports[-1].total >= 5 * MiB + 5
    # And the sparse source stayed sparse in the volume
    assert os.stat(done.path).st_blocks * 512 < 6 * MiB
    # When the same step runs again (redelivery)
    again = await platform.ensure_volume(request("d0", 24 * MiB, VolumeSource.IMPORTER))
    copy_again = await platform.import_disk(again, ImageRef(path=str(disk)))
    # Then the same volume is found by labels and nothing is copied twice
    assert again.name == volume.name
    assert copy_again == copy
    assert len(await platform.list_volumes(NS, volumes.labels_for(MIG, VM))) == 1


async def test_importer_into_qcow2_from_streamoptimized_vmdk(
    platform: LocalVolumes, disk: Path, tmp_path: Path
) -> None:
    # Given a streamOptimized VMDK source and a qcow2 Filesystem volume
    vmdk = tmp_path / "src.vmdk"
    subprocess.run(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "vmdk",
            "-o",
            "subformat=streamOptimized",
            str(disk),
            str(vmdk),
        ],
        check=True,
    )
    volume = await platform.ensure_volume(
        request("d1", 24 * MiB, VolumeSource.IMPORTER, fmt="qcow2")
    )
    # When imported
    copy = await platform.import_disk(
        volume, ImageRef(path=str(vmdk), format=DiskFormat.VMDK_STREAM)
    )
    # Then the qcow2 volume holds exactly the disk
    done = await platform.get_volume(NS, volume.name)
    assert done is not None and done.format == "qcow2"
    assert copy.target.digest == digest_of(disk) == data_digest(done)


async def test_killed_importer_resumes_and_checksum_matches(tmp_path: Path, disk: Path) -> None:
    # Given an importer slowed to 16 MiB/s over 40 MiB of data, checkpointing often
    big = make_raw(tmp_path / "big.raw", 64 * MiB, [(i * 4 * MiB, 5 * MiB // 2) for i in range(16)])
    platform = LocalVolumes(settings(tmp_path, max_rate=16 * MiB))
    volume = await platform.ensure_volume(request("d0", 64 * MiB, VolumeSource.IMPORTER))
    task = asyncio.create_task(platform.import_disk(volume, ImageRef(path=str(big))))
    # When the workload process is killed -9 after a few checkpoints
    child = await wait_for_child("ferry.platform.local.importer")
    state = await wait_for_watermark(platform, volume, 3)
    child.kill()
    with pytest.raises(workload.WorkloadCrashed, match="SIGKILL"):
        await task
    # Then the next attempt starts from the checkpoint, not from zero
    fast = LocalVolumes(settings(tmp_path))
    reports: list[volumes.TransferProgress] = []
    copy = await fast.import_disk(volume, ImageRef(path=str(big)), reports.append)
    assert reports[0].done >= state * checksum.CHUNK * 5 // 8  # 2.5 of every 4 MiB is data
    # And the whole-disk checksum still matches the source
    assert copy.source.digest == copy.target.digest == digest_of(big)
    done = await fast.get_volume(NS, volume.name)
    assert done is not None and data_digest(done) == digest_of(big)


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


# -- blank DataVolume and pvcinit ------------------------------------------------------


async def test_blank_datavolume_is_sized_and_bound_empty(platform: LocalVolumes) -> None:
    # Given blank DataVolumes: a Filesystem qcow2 one and a Block one
    fs_request = request("d0", 10 * MiB + 512, VolumeSource.BLANK, fmt="qcow2")
    fs = await platform.ensure_volume(fs_request)
    block = await platform.ensure_volume(
        request("d1", 8 * MiB, VolumeSource.BLANK, mode=VolumeMode.BLOCK, storage_class="fast")
    )
    # Then sizes follow CDI: Filesystem gets the overhead, Block does not
    assert fs.size == volumes.required_size(10 * MiB + 512, VolumeMode.FILESYSTEM)
    assert fs.size > 11 * MiB
    assert block.size == 8 * MiB
    # When pvcinit binds the VM's volumes
    bound = {v.disk_id: v for v in await platform.bind_volumes(NS, MIG, VM)}
    # Then both are Bound to empty data of the disk's size, in their class's directory
    assert {v.phase for v in bound.values()} == {Phase.BOUND}
    info = subprocess.run(
        ["qemu-img", "info", "-f", "qcow2", "--output=json", bound["d0"].path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert msgspec.json.decode(info)["virtual-size"] == 10 * MiB + 512
    assert os.path.getsize(bound["d1"].path) == 8 * MiB
    assert os.stat(bound["d1"].path).st_blocks == 0
    assert "/fast/" in bound["d1"].path and bound["d1"].path.endswith("block.raw")
    pv = msgspec.json.decode(Path(bound["d1"].path).with_name("pv.json").read_bytes())
    assert pv["access_modes"] == ["ReadWriteOnce"] and pv["volume_mode"] == "Block"


async def test_pvcinit_binds_all_or_nothing(tmp_path: Path) -> None:
    # Given a VM with a small disk and a disk larger than the storage's free space
    platform = LocalVolumes(settings(tmp_path))
    await platform.ensure_volume(request("small", MiB, VolumeSource.BLANK))
    await platform.ensure_volume(request("huge", 1 << 60, VolumeSource.BLANK))
    # When pvcinit runs
    with pytest.raises(volumes.InsufficientStorage, match="free"):
        await platform.bind_volumes(NS, MIG, VM)
    # Then no volume was bound, not even the small one
    states = await platform.list_volumes(NS, volumes.labels_for(MIG, VM))
    assert {s.phase for s in states} == {Phase.PENDING}
    assert not any(s.pv for s in states)


async def test_same_labels_different_shape_is_a_conflict(platform: LocalVolumes) -> None:
    await platform.ensure_volume(request("d0", MiB, VolumeSource.BLANK))
    with pytest.raises(volumes.VolumeConflict, match="capacity"):
        await platform.ensure_volume(request("d0", 2 * MiB, VolumeSource.BLANK))


async def test_block_volume_refuses_qcow2(platform: LocalVolumes) -> None:
    with pytest.raises(volumes.VolumeError, match="Block volume holds raw"):
        await platform.ensure_volume(
            request("d0", MiB, VolumeSource.BLANK, mode=VolumeMode.BLOCK, fmt="qcow2")
        )


# -- PVC + populator -------------------------------------------------------------------


async def test_populator_fills_prime_rebinds_and_removes_prime(
    platform: LocalVolumes, disk: Path
) -> None:
    # Given a PVC with a populator: ensuring it also creates the prime claim
    volume = await platform.ensure_volume(request("d0", 24 * MiB, VolumeSource.POPULATOR))
    prime = await platform.get_volume(NS, transfer.prime_name(volume.name))
    assert prime is not None and prime.temporary and prime.labels[label.TEMPORARY]
    # And pvcinit binds the prime, not the original
    await platform.bind_volumes(NS, MIG, VM)
    assert (await platform.get_volume(NS, volume.name)).pv == ""  # type: ignore[union-attr]
    # When the populator runs
    copy = await platform.populate(volume, ImageRef(path=str(disk)))
    # Then the original claim owns the prime's volume, verified, and the prime is gone
    done = await platform.get_volume(NS, volume.name)
    assert done is not None and done.phase == Phase.SUCCEEDED and done.pv == f"pv-{prime.name}"
    assert copy.target.digest == digest_of(disk) == data_digest(done)
    assert await platform.get_volume(NS, prime.name) is None


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


@pytest.mark.parametrize(
    ("stage", "expected_state"),
    [("prime", "old"), ("filled", "old"), ("rebound", "new"), ("cleaned", "new")],
)
async def test_populator_killed_between_stages_is_never_half_bound(
    platform: LocalVolumes, disk: Path, stage: str, expected_state: str
) -> None:
    # Given a populator workload stopped right after a stage
    volume = await platform.ensure_volume(request("d0", 24 * MiB, VolumeSource.POPULATOR))
    proc = start_populator(platform, volume, disk, stage)
    wait_stopped_at(proc, stage)
    # When it is killed -9 there
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Then the claim is in the old or the new state, nothing in between
    state = await platform.get_volume(NS, volume.name)
    assert assert_old_or_new(state, digest_of(disk)) == expected_state
    # And running the populator again completes it, leaving no prime behind
    copy = await platform.populate(volume, ImageRef(path=str(disk)))
    final = await platform.get_volume(NS, volume.name)
    assert assert_old_or_new(final, digest_of(disk)) == "new"
    assert copy.target.digest == digest_of(disk)
    names = {v.name for v in await platform.list_volumes(NS, volumes.labels_for(MIG, VM))}
    assert names == {volume.name}


async def test_populator_killed_mid_copy_resumes(tmp_path: Path) -> None:
    # Given a slow populator copy
    big = make_raw(tmp_path / "big.raw", 48 * MiB, [(i * 4 * MiB, 3 * MiB) for i in range(12)])
    slow = LocalVolumes(settings(tmp_path, max_rate=12 * MiB))
    volume = await slow.ensure_volume(request("d0", 48 * MiB, VolumeSource.POPULATOR))
    task = asyncio.create_task(slow.populate(volume, ImageRef(path=str(big))))
    child = await wait_for_child("ferry.platform.local.populator")
    prime = await wait_prime_bound(slow, volume)
    await wait_for_watermark(slow, prime, 2)
    # When the populator is killed mid-copy
    child.kill()
    with pytest.raises(workload.WorkloadCrashed):
        await task
    # Then the claim is still unbound…
    assert_old_or_new(await slow.get_volume(NS, volume.name), digest_of(big))
    # …and the next run finishes it with the right data
    fast = LocalVolumes(settings(tmp_path))
    copy = await fast.populate(volume, ImageRef(path=str(big)))
    assert copy.target.digest == digest_of(big)
    assert_old_or_new(await fast.get_volume(NS, volume.name), digest_of(big))


async def wait_prime_bound(platform: LocalVolumes, volume: VolumeState) -> VolumeState:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        prime = await platform.get_volume(NS, transfer.prime_name(volume.name))
        if prime is not None and prime.pv:
            return prime
        await asyncio.sleep(0.02)
    raise TimeoutError("prime never bound")


# -- failures and clean-up -------------------------------------------------------------


@pytest.fixture
def tiny_storage(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs as a storage class directory (real ENOSPC); needs root."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_record_that_does_not_fit_leaves_the_old_one_and_no_temporary_file(
    tiny_storage: Path,
) -> None:
    # Given a record on a 4 MiB tmpfs that is then filled up
    record = tiny_storage / "claim.json"
    durable.write_atomic(record, b'{"phase": "Bound"}')
    filler = tiny_storage / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(64 * 1024))
    # When a bigger record is written over it
    with pytest.raises(OSError) as failed:
        durable.write_atomic(record, b"x" * (1 << 20))
    # Then it fails with ENOSPC, the old record is whole, and nothing else is left behind
    assert failed.value.errno == errno.ENOSPC
    assert record.read_bytes() == b'{"phase": "Bound"}'
    assert sorted(p.name for p in tiny_storage.iterdir()) == ["claim.json", "filler"]


async def test_importer_enospc_fails_precisely_and_empties_the_volume(
    tmp_path: Path, tiny_storage: Path
) -> None:
    # Given thin-provisioned storage on a 4 MiB tmpfs and 8 MiB of data to import
    src = make_raw(tmp_path / "s.raw", 16 * MiB, [(0, 8 * MiB)])
    platform = LocalVolumes(
        settings(tmp_path, storage_classes={"tiny": tiny_storage}, check_capacity=False)
    )
    volume = await platform.ensure_volume(
        request("d0", 16 * MiB, VolumeSource.IMPORTER, storage_class="tiny")
    )
    # When imported
    with pytest.raises(errors.NoSpaceError, match="no space left"):
        await platform.import_disk(volume, ImageRef(path=str(src)))
    # Then the volume is Failed with the reason, its data emptied, no checkpoint left
    failed = await platform.get_volume(NS, volume.name)
    assert failed is not None and failed.phase == Phase.FAILED and "ENOSPC" in failed.reason
    assert os.stat(failed.path).st_blocks == 0
    assert not platform.store.copy_dir(failed).exists()


async def test_populator_enospc_removes_the_prime(tmp_path: Path, tiny_storage: Path) -> None:
    src = make_raw(tmp_path / "s.raw", 16 * MiB, [(0, 8 * MiB)])
    platform = LocalVolumes(
        settings(tmp_path, storage_classes={"tiny": tiny_storage}, check_capacity=False)
    )
    volume = await platform.ensure_volume(
        request("d0", 16 * MiB, VolumeSource.POPULATOR, storage_class="tiny")
    )
    with pytest.raises(errors.NoSpaceError):
        await platform.populate(volume, ImageRef(path=str(src)))
    # Then the prime claim and its data are gone and the claim is unbound, Failed
    assert await platform.get_volume(NS, transfer.prime_name(volume.name)) is None
    assert [p for p in tiny_storage.iterdir() if p.name.startswith("pv-")] == []
    failed = await platform.get_volume(NS, volume.name)
    assert failed is not None and failed.phase == Phase.FAILED and not failed.pv


async def test_missing_source_fails_as_source_gone(platform: LocalVolumes, tmp_path: Path) -> None:
    volume = await platform.ensure_volume(request("d0", MiB, VolumeSource.IMPORTER))
    with pytest.raises(errors.SourceGoneError):
        await platform.import_disk(volume, ImageRef(path=str(tmp_path / "gone.raw")))
    failed = await platform.get_volume(NS, volume.name)
    assert failed is not None and failed.phase == Phase.FAILED


async def test_cleanup_removes_temporaries_then_everything(
    platform: LocalVolumes, disk: Path
) -> None:
    # Given a VM with an imported disk, a blank disk and a populator claim with its prime
    imported = await platform.ensure_volume(request("a", 24 * MiB, VolumeSource.IMPORTER))
    await platform.ensure_volume(request("b", 4 * MiB, VolumeSource.BLANK))
    pvc = await platform.ensure_volume(request("c", 4 * MiB, VolumeSource.POPULATOR))
    await platform.bind_volumes(NS, MIG, VM)
    await platform.import_disk(imported, ImageRef(path=str(disk)))
    # When temporary volumes are cleaned
    removed = await platform.delete_temporary_volumes(NS, MIG, VM)
    # Then only the prime went; the real volumes stay
    assert removed == [transfer.prime_name(pvc.name)]
    left = {v.disk_id for v in await platform.list_volumes(NS, volumes.labels_for(MIG, VM))}
    assert left == {"a", "b", "c"}
    # When everything of the VM is removed (failure / cancel)
    removed_all = await platform.delete_volumes(NS, MIG, VM)
    # Then no claim and no data file remains, and a second call is harmless
    assert len(removed_all) == 3
    assert await platform.list_volumes(NS, volumes.labels_for(MIG, VM)) == []
    assert not list((platform.store.root / "storage").glob("*/pv-*"))
    assert await platform.delete_volumes(NS, MIG, VM) == []


# -- the factory -----------------------------------------------------------------------


def test_factory_builds_the_local_platform_and_names_the_others(tmp_path: Path) -> None:
    made: Platform = factory.create(PlatformSettings(), data_dir=tmp_path)
    assert hasattr(made, "ensure_volume") and hasattr(made, "create_vm")
    from ferry.platform.kubernetes.platform import KubernetesPlatform
    from ferry.platform.local.platform import LocalPlatform

    assert isinstance(made, LocalPlatform)
    # Volumes under <data_dir>/storage, VMs under <data_dir>/vms, as before the seam
    assert made.volumes.settings.storage_root == tmp_path / "storage"
    assert made.vms.root == (tmp_path / "vms").resolve()
    assert isinstance(
        factory.create(PlatformSettings(kind="kubernetes"), data_dir=tmp_path), KubernetesPlatform
    )
    with pytest.raises(ValidationError, match="local"):
        PlatformSettings.model_validate({"kind": "openshift"})


SERVICE_SCRIPT = """
import asyncio, sys
from pathlib import Path
from ferry.platform.images import ImageRef
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import LocalSettings
from ferry.platform.volumes import VolumeState
import msgspec

async def main():
    settings = LocalSettings(
        storage_root=Path(sys.argv[1]), checkpoint_seconds=0.1, max_rate=16 << 20
    )
    volume = msgspec.json.decode(sys.argv[2].encode(), type=VolumeState)
    await LocalVolumes(settings).import_disk(volume, ImageRef(path=sys.argv[3]))

asyncio.run(main())
"""


async def test_killing_the_service_kills_its_importer_and_the_next_run_resumes(
    tmp_path: Path,
) -> None:
    # Given a "service" process running an import (its importer is its child)
    big = make_raw(tmp_path / "big.raw", 64 * MiB, [(i * 4 * MiB, 3 * MiB) for i in range(16)])
    platform = LocalVolumes(settings(tmp_path))
    volume = await platform.ensure_volume(request("d0", 64 * MiB, VolumeSource.IMPORTER))
    service = subprocess.Popen(
        [
            platform.settings.python,
            "-c",
            SERVICE_SCRIPT,
            str(platform.settings.storage_root),
            msgspec.json.encode(volume).decode(),
            str(big),
        ]
    )
    importer = await wait_for_child("ferry.platform.local.importer")
    await wait_for_watermark(platform, volume, 3)
    # When the service is killed -9
    service.kill()
    service.wait()
    # Then its importer dies with it (no orphan writer)…
    importer.wait(timeout=10)
    # …and the next run resumes from the checkpoint with a matching checksum
    reports: list[volumes.TransferProgress] = []
    copy = await platform.import_disk(volume, ImageRef(path=str(big)), reports.append)
    assert reports[0].done > 0
    assert copy.source.digest == copy.target.digest == digest_of(big)


async def test_killed_importer_leaves_no_qemu_nbd_behind(tmp_path: Path) -> None:
    # Given an import from a qcow2 image (served by a qemu-nbd under the importer)
    big = make_raw(tmp_path / "big.raw", 64 * MiB, [(i * 4 * MiB, 3 * MiB) for i in range(16)])
    image = tmp_path / "big.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(big), str(image)],
        check=True,
    )
    platform = LocalVolumes(settings(tmp_path, max_rate=8 * MiB))
    volume = await platform.ensure_volume(request("d0", 64 * MiB, VolumeSource.IMPORTER))
    source = ImageRef(path=str(image), format=DiskFormat.QCOW2)
    task = asyncio.create_task(platform.import_disk(volume, source))
    importer = await wait_for_child("ferry.platform.local.importer")
    servers = [await wait_for_child("qemu-nbd")]
    # When the importer is killed -9
    importer.kill()
    with pytest.raises(workload.WorkloadCrashed):
        await task
    # Then its qemu-nbd goes too
    _gone, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive
    # And the retry finishes with the right data
    copy = await LocalVolumes(settings(tmp_path)).import_disk(volume, source)
    assert copy.target.digest == digest_of(big)
