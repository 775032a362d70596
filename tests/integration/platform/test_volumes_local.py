"""Volume semantics of the local platform, on real files and real workload processes:
DataVolumes with an importer, blank DataVolumes and pvcinit, the platform factory.

Each test drives :class:`LocalVolumes` the way the volume-service will, and
checks what is on disk: claim records, data files, digests. Crashes are real:
the workload is a child process and is killed with SIGKILL. Helpers: ``localkit``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import msgspec
import pytest
from localkit import (
    MIG,
    NS,
    VM,
    MiB,
    data_digest,
    digest_of,
    make_raw,
    request,
    settings,
    wait_for_child,
    wait_for_watermark,
)
from pydantic import ValidationError

from ferry.platform import factory, volumes
from ferry.platform.base import Platform
from ferry.platform.copy import checksum
from ferry.platform.images import ImageRef
from ferry.platform.local import workload
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.settings import PlatformSettings
from ferry.platform.volumes import Phase
from ferry.proto.inventory import DiskFormat, VolumeMode
from ferry.proto.volume import VolumeSource


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
