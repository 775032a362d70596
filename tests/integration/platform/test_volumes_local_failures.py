"""The local platform's failures and clean-up: a full disk, a missing source, a killed
service or importer; records are never torn and nothing is left behind."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from pathlib import Path

import msgspec
import psutil
import pytest
from localkit import (
    MIG,
    NS,
    VM,
    MiB,
    digest_of,
    make_raw,
    request,
    settings,
    wait_for_child,
    wait_for_watermark,
)

from ferry.platform import durable, errors, volumes
from ferry.platform.images import ImageRef
from ferry.platform.local import transfer, workload
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.volumes import Phase
from ferry.proto.inventory import DiskFormat
from ferry.proto.volume import VolumeSource


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
