"""The local platform's PVC + populator: the prime claim is filled, re-bound and
removed, and a populator killed at any stage is never half bound."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from localkit import (
    MIG,
    NS,
    VM,
    MiB,
    assert_old_or_new,
    data_digest,
    digest_of,
    make_raw,
    request,
    settings,
    start_populator,
    wait_for_child,
    wait_for_watermark,
    wait_prime_bound,
    wait_stopped_at,
)

from ferry.platform import volumes
from ferry.platform.images import ImageRef
from ferry.platform.local import transfer, workload
from ferry.platform.local.volumes import LocalVolumes
from ferry.platform.volumes import Phase
from ferry.proto import label
from ferry.proto.volume import VolumeSource


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
