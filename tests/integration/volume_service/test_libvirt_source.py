"""Warm rounds through the volume-service's real handler, the local platform and a
real libvirt guest: a full first round, precopies that write only changed blocks,
the last delta after the power-off, and the source left without a checkpoint.

The handler runs through the in-memory broker (the bus's own dispatcher and
middleware, no NATS); copies run in the local platform's importer workloads.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import libvirt
import msgspec
import psutil  # type: ignore[import-untyped]
import pytest

from ferry.bus import Router
from ferry.platform import factory as platforms
from ferry.platform.copy import delta
from ferry.platform.local.transfer import FAULT_PAUSE_ENV
from ferry.platform.settings import LocalSettings, PlatformSettings
from ferry.platform.volumes import VolumePlatform
from ferry.proto import volume
from ferry.proto.inventory import PowerState, ProviderType, Vm, VolumeTarget
from ferry.proto.subjects import Service
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.base import Provider
from ferry.providers.libvirt import backup, jobs
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.testing import backup_tls, libvirtd
from ferry.testing.broker import InMemoryBroker
from ferry.volume_service.handlers import VolumeHandlers
from ferry.volume_service.settings import VolumeSettings

MiB = 1024 * 1024
BLOCK = 64 * 1024
SIZE = 64 * MiB
IDS = {"plan": "p", "migration": "m1", "vm": "v1"}
REF = SourceRef(provider="kvm", type=ProviderType.LIBVIRT, url=libvirtd.URI)


@pytest.fixture
def guest() -> Iterator[libvirtd.Guest]:
    conn = libvirt.open(libvirtd.uri_or_skip())
    made = libvirtd.define_guest(conn, [SIZE], fill=[(0, 4 * MiB, 0x11), (32 * MiB, 8 * MiB, 0x22)])
    yield made
    made.remove()
    conn.close()


@pytest.fixture(params=["unix", "tls"])
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[LibvirtProvider]:
    """The provider reading the jobs here (a Unix socket), or as a remote host's (over TCP
    with TLS, through local relays: :mod:`ferry.providers.libvirt.exports`)."""
    uri = libvirtd.uri_or_skip()
    work = libvirtd.scratch_dir("ferry-work-")
    if request.param == "tls":
        secret = backup_tls.ensure_or_skip().secret()
        made = LibvirtProvider(uri, secret, backup_tls.provider_settings(work))
    else:
        made = LibvirtProvider(uri, {}, {"workdir": str(work)})
    yield made
    await made.close()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def platform(tmp_path: Path) -> VolumePlatform:
    settings = PlatformSettings(local=LocalSettings(checkpoint_seconds=0.2))
    return platforms.create(settings, data_dir=tmp_path / "data")


@pytest.fixture
async def broker(
    platform: VolumePlatform, provider: LibvirtProvider
) -> AsyncIterator[InMemoryBroker]:
    async def open_provider(ref: SourceRef) -> Provider:
        return provider

    router = Router(Service.VOLUME)
    VolumeHandlers(platform, open_provider, VolumeSettings(progress_interval_seconds=0.2)).register(
        router
    )
    async with InMemoryBroker(router) as running:
        yield running


def _round(vm: Vm, precopy: int, since: str, *, final: bool = False) -> volume.CopyDisks:
    return volume.CopyDisks(
        **IDS,
        step=f"CopyDisks@{precopy}",
        namespace="ns",
        provider=REF,
        inventory=vm,
        precopy=precopy,
        final=final,
        warm=True,
        since=since,
    )


def _copied(delivered: object) -> volume.DisksCopied:
    found = [m for m in delivered.published if isinstance(m, volume.DisksCopied)]  # type: ignore[attr-defined]
    assert found, f"no DisksCopied: {delivered}"
    return found[-1]


async def test_warm_rounds_copy_only_changed_blocks_and_leave_nothing_at_the_source(
    broker: InMemoryBroker,
    provider: LibvirtProvider,
    platform: VolumePlatform,
    guest: libvirtd.Guest,
) -> None:
    # Given a running guest and an importer volume for its disk
    vm = await provider.vm(guest.name)
    created = await broker.send(_create(vm))
    assert created.settled == "ack", created
    # When the first round copies the disk in full
    first = _copied(await broker.send(_round(vm, 0, "")))
    assert first.changed == 12 * MiB and first.checkpoint
    # And the guest writes between precopies, each round copying from the last checkpoint
    since, copied = first.checkpoint, []
    for precopy, offset in ((1, 8 * MiB), (2, 48 * MiB)):
        guest.write("vda", offset, 4096, 0x30 + precopy)
        done = _copied(await broker.send(_round(vm, precopy, since)))
        copied.append((done.changed, done.disks[0].bytes_copied))
        assert await provider.checkpoints(vm) == [since, done.checkpoint]
        since = done.checkpoint
    # Then each precopy wrote only the changed block, far below the disk size
    assert copied == [(BLOCK, BLOCK), (BLOCK, BLOCK)]
    # When the guest writes once more, is powered off, and the last delta runs
    guest.write("vda", 60 * MiB, 4096, 0x77)
    await provider.shutdown(vm, timeout=0.5)
    last = _copied(await broker.send(_round(vm, 3, since, final=True)))
    # Then the last delta held that one block, the whole disks' digests agree,
    assert (last.changed, last.disks[0].bytes_copied) == (BLOCK, BLOCK)
    assert last.disks[0].source.digest == last.disks[0].target.digest
    assert last.disks[0].source.algorithm != delta.ALGORITHM
    # the target holds exactly the source's bytes, and no checkpoint is left at the source
    [claim] = [v for v in await platform.list_volumes("ns", {}) if not v.temporary]
    target = hashlib.sha256(Path(claim.path).read_bytes()[:SIZE]).hexdigest()
    assert target == libvirtd.qcow2_sha256(guest.disks["vda"])
    assert last.checkpoint == "" and await provider.checkpoints(vm) == []


async def test_a_round_canceled_mid_copy_leaves_no_export_and_the_source_running(
    broker: InMemoryBroker,
    provider: LibvirtProvider,
    guest: libvirtd.Guest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a warm VM whose first round is done and whose second round's copy hangs
    vm = await provider.vm(guest.name)
    await broker.send(_create(vm))
    first = _copied(await broker.send(_round(vm, 0, "")))
    guest.write("vda", 8 * MiB, 4096, 0x31)
    monkeypatch.setenv(FAULT_PAUSE_ENV, "bound")  # the workload stops itself mid-round
    running = await broker.start(_round(vm, 1, first.checkpoint))
    await _until(lambda: _job_running(guest))
    # When the migration is canceled
    broker.cancel("m1")
    done = await running.settled()
    # Then the round ended canceled, its backup job and export are gone, the source runs
    assert done.settled == "term" and done.failed is not None and done.failed.canceled
    assert not _job_running(guest)
    assert not [p for p in os.listdir(provider.workdir) if p.startswith(jobs.WORKDIR_PREFIX)]
    assert await provider.power_state(vm) == PowerState.ON
    # And the controller's clean-up removes every checkpoint Ferry made
    left = await provider.checkpoints(vm)
    assert first.checkpoint in left
    for checkpoint in left:
        await provider.remove_checkpoint(vm, checkpoint)
    assert await provider.checkpoints(vm) == []


def _create(vm: Vm) -> volume.CreateVolumes:
    return volume.CreateVolumes(
        **IDS,
        step="CreateDataVolumes",
        namespace="ns",
        source=VolumeSource.IMPORTER,
        provider=REF,
        inventory=vm,
        targets=[VolumeTarget(disk_id="vda", storage_class="standard")],
    )


def _job_running(guest: libvirtd.Guest) -> bool:
    try:
        guest.dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False
    return True


async def _until(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_cold_flow_two_populates_from_a_shut_off_domain(
    broker: InMemoryBroker,
    provider: LibvirtProvider,
    platform: VolumePlatform,
    guest: libvirtd.Guest,
) -> None:
    # Given a shut-off domain (the cold flow powered it off) and a PVC + populator for its disk
    guest.dom.destroy()
    vm = await provider.vm(guest.name)
    create = msgspec.structs.replace(_create(vm), source=VolumeSource.POPULATOR)
    assert (await broker.send(create)).settled == "ack"
    allocated = await broker.send(volume.AllocateDisks(**IDS, step="AllocateDisks", namespace="ns"))
    assert allocated.settled == "ack"
    # When the populator copies it (a cold CopyDisks)
    cold = msgspec.structs.replace(_round(vm, 0, ""), warm=False, final=True, step="CopyDisks")
    copied = _copied(await broker.send(cold))
    # Then the claim holds the disk's bytes, verified, and no prime volume is left
    [disk] = copied.disks
    assert disk.source == disk.target and disk.source.bytes == SIZE
    claims = await platform.list_volumes("ns", {})
    assert [c.temporary for c in claims] == [False]
    target = hashlib.sha256(Path(claims[0].path).read_bytes()[:SIZE]).hexdigest()
    assert target == libvirtd.qcow2_sha256(guest.disks["vda"])
    # And nothing of Ferry's is left at the source: no checkpoint, no export (the TLS
    # credentials' folder is the provider's, until it closes), the domain off as it was
    assert await provider.checkpoints(vm) == [] and not guest.dom.isActive()
    assert [p for p in os.listdir(provider.workdir) if not p.startswith("ferry-tls-")] == []


async def test_a_first_round_killed_mid_copy_resumes_and_loses_no_write(
    provider: LibvirtProvider, guest: libvirtd.Guest, tmp_path: Path
) -> None:
    # Given a first round copying slowly (throttled) into a fresh volume
    settings = LocalSettings(checkpoint_seconds=0.2, max_rate=12 * MiB)
    slow = platforms.create(PlatformSettings(local=settings), data_dir=tmp_path / "slow")

    async def open_provider(ref: SourceRef) -> Provider:
        return provider

    router = Router(Service.VOLUME)
    VolumeHandlers(slow, open_provider, VolumeSettings(progress_interval_seconds=0.2)).register(
        router
    )
    vm = await provider.vm(guest.name)
    async with InMemoryBroker(router) as broker:
        await broker.send(_create(vm))
        running = await broker.start(_round(vm, 0, ""))
        await _until(lambda: _progress(broker) >= 6 * MiB)
        # When the guest rewrites a range the copy already passed, and the workload is killed
        guest.write("vda", 0, 4096, 0x5A)
        for child in psutil.Process().children(recursive=True):
            try:  # a helper may end (or be a zombie) between the listing and the read
                if "ferry.platform.local.importer" in " ".join(child.cmdline()):
                    child.kill()
            except psutil.Error:
                continue
        assert (await running.settled()).settled == "nak"
        # And the round is delivered again, then a precopy follows from what it returned
        first = _copied(await broker.send(_round(vm, 0, "")))
        again = _copied(await broker.send(_round(vm, 1, first.checkpoint)))
    # Then the rewritten block came over in the precopy: the target equals the source
    assert again.changed >= BLOCK
    [claim] = [v for v in await slow.list_volumes("ns", {}) if not v.temporary]
    target = hashlib.sha256(Path(claim.path).read_bytes()[:SIZE]).hexdigest()
    assert target == libvirtd.qcow2_sha256(guest.disks["vda"])


def _progress(broker: InMemoryBroker) -> int:
    done = [m.done for m in broker.published if isinstance(m, volume.DiskProgress)]
    return max(done, default=0)


async def test_a_precopy_whose_service_died_mid_round_resumes_inside_the_round(
    provider: LibvirtProvider,
    guest: libvirtd.Guest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a filled first round, then the guest changing 16 MiB in four places
    settings = LocalSettings(checkpoint_seconds=0.1, max_rate=4 * MiB)
    slow = platforms.create(PlatformSettings(local=settings), data_dir=tmp_path / "data")
    fast = platforms.create(PlatformSettings(local=LocalSettings()), data_dir=tmp_path / "data")

    async def open_provider(ref: SourceRef) -> Provider:
        return provider

    def broker_on(platform: VolumePlatform) -> InMemoryBroker:
        router = Router(Service.VOLUME)
        handlers = VolumeHandlers(
            platform, open_provider, VolumeSettings(progress_interval_seconds=0.2)
        )
        handlers.register(router)
        return InMemoryBroker(router)

    vm = await provider.vm(guest.name)
    async with broker_on(fast) as broker:
        await broker.send(_create(vm))
        first = _copied(await broker.send(_round(vm, 0, "")))
    for i in range(4):
        guest.write("vda", (4 + 12 * i) * MiB, 4 * MiB, 0x60 + i)
    # When precopy 1 is killed after 8 of those MiB while its service holds the backup
    # job (the service died: nothing closed its view), at the same time as its workload
    monkeypatch.setattr(backup.Backup, "close", _left_open)
    async with broker_on(slow) as broker:
        running = await broker.start(_round(vm, 1, first.checkpoint))
        await _until(lambda: _progress(broker) >= 8 * MiB)
        _kill_workloads()
        assert (await running.settled()).settled == "nak"
    monkeypatch.undo()
    taken = [c for c in await provider.checkpoints(vm) if c != first.checkpoint]
    # And the round is delivered again (to a restarted service)
    async with broker_on(fast) as broker:
        again = _copied(await broker.send(_round(vm, 1, first.checkpoint)))
    # Then it read the same picture and copied only what the killed attempt had not
    assert again.checkpoint == taken[0] and again.changed == 16 * MiB
    assert again.disks[0].bytes_copied <= 8 * MiB
    assert again.disks[0].source.digest == again.disks[0].target.digest
    # And the target equals the source, and no job is left running
    [claim] = [v for v in await fast.list_volumes("ns", {}) if not v.temporary]
    target = hashlib.sha256(Path(claim.path).read_bytes()[:SIZE]).hexdigest()
    assert target == libvirtd.qcow2_sha256(guest.disks["vda"])
    assert not _job_running(guest)


async def _left_open(self: backup.Backup) -> None:
    """A view whose service was killed -9: its backup job is never ended."""


def _kill_workloads() -> None:
    for child in psutil.Process().children(recursive=True):
        try:  # a helper may end (or be a zombie) between the listing and the read
            if "ferry.platform.local.importer" in " ".join(child.cmdline()):
                child.kill()
        except psutil.Error:
            continue
