"""Reading a powered-off VM's disks through an NFC export lease (``diskTransfer: nfc``)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from vcsimkit import copy_to_raw, datastore_dir, make_provider

from ferry.providers.base import ProviderError, SourceInterrupted
from ferry.providers.vsphere import nfc
from ferry.providers.vsphere.disks import DatastoreFileMissing
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.arrange import admin as admin_of
from ferry.testing.vcsim.server import Endpoint, Vcsim
from ferry.volume_service.handlers import paced
from ferry.volume_service.images import image_ref

MIB = 1024 * 1024
VM = "DC0_C0_RP0_VM1"


def _guest_bytes() -> bytes:
    return os.urandom(256 * 1024) + bytes(512 * 1024) + os.urandom(256 * 1024)


@pytest.fixture
def sim(vcsim_binary: Path) -> Iterator[Endpoint]:
    # A short lease timeout, so that expiry and the progress calls show in seconds, and
    # no flat extent on the datastore path, as on vSAN: only an export reads the disks
    with Vcsim(nfc_lease_timeout=3, no_flat_reads=True) as simulator:
        assert simulator.endpoint is not None
        yield simulator.endpoint


@pytest.fixture
async def nfc_provider(sim: Endpoint) -> AsyncIterator[VsphereProvider]:
    provider = make_provider(sim, caBundle=sim.cert_file, diskTransfer="nfc")
    try:
        yield provider
    finally:
        await provider.close()


async def _off_with(provider: VsphereProvider, sim: Endpoint, content: bytes) -> Any:
    vm = await provider.vm(VM)
    await provider.shutdown(vm, timeout=5)
    with admin_of(sim) as si:
        (datastore_dir(si) / VM / "disk1-flat.vmdk").write_bytes(content)
    return vm


async def test_a_disk_read_through_an_export_lease_is_copied_verified(
    nfc_provider: VsphereProvider, sim: Endpoint, tmp_path: Path
) -> None:
    # Given a powered-off VM whose disk holds data around a hole
    content = _guest_bytes()
    vm = await _off_with(nfc_provider, sim, content)

    # When the volume-service's path copies it through an export lease (downloaded,
    # checked, then read as a local streamOptimized VMDK by the copy engine)
    async with nfc_provider.open_disk(vm, vm.disks[0].id) as reader:
        qemu = reader.qemu_source()
        download = Path(qemu.options["file"]["filename"])
        mode = stat.S_IMODE(download.stat().st_mode)
        folder_mode = stat.S_IMODE(download.parent.stat().st_mode)
        assert qemu.format == "vmdk" and len(qemu.pins) == 1
        first = await reader.read(0, 4096)
        extents = await reader.extents()
        ref = image_ref(qemu)

        result = await copy_to_raw(ref, tmp_path)

    # Then the target holds the guest's bytes, verified by the engine's checksums
    assert (tmp_path / "disk.raw").read_bytes() == content
    assert result.size == MIB and result.source == result.target
    assert first == content[:4096]
    assert extents and extents[0].offset == 0 and sum(e.length for e in extents) < MIB
    # and the download was private, and is gone with the reader
    assert mode == 0o600 and folder_mode == 0o700
    assert not download.exists() and not download.parent.exists()


async def test_two_disks_read_at_once_share_one_lease_kept_alive_past_its_timeout(
    nfc_provider: VsphereProvider, sim: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a powered-off VM, and downloads slowed so that reading takes longer than
    # the lease's timeout (3 s): only the provider's progress calls keep it alive
    content = _guest_bytes()
    vm = await _off_with(nfc_provider, sim, content)
    opened: list[Any] = []
    real_open = nfc.Leases._open

    async def counting_open(self: nfc.Leases, vm: Any, ref_of: Any) -> nfc.ExportLease:
        lease = await real_open(self, vm, ref_of)
        opened.append(lease)
        return lease

    real_download = nfc.download

    async def slow_download(lease: nfc.ExportLease, *args: Any) -> Path:
        await asyncio.sleep(5)
        return await real_download(lease, *args)

    ended: list[str] = []
    real_end = nfc.ExportLease.end

    async def recorded_end(self: nfc.ExportLease) -> None:
        ended.append("HttpNfcLeaseAbort" if self.failed else "HttpNfcLeaseComplete")
        await real_end(self)

    monkeypatch.setattr(nfc.ExportLease, "end", recorded_end)
    monkeypatch.setattr(nfc.Leases, "_open", counting_open)
    monkeypatch.setattr(nfc, "download", slow_download)

    # When the same disk is opened by two readers at once
    async def read_all() -> bytes:
        async with nfc_provider.open_disk(vm, vm.disks[0].id) as reader:
            return await reader.read(0, MIB)

    first, second = await asyncio.gather(read_all(), read_all())

    # Then both read the guest's bytes through one lease, completed once, not aborted
    assert first == second == content
    assert len(opened) == 1
    assert ended == ["HttpNfcLeaseComplete"]


async def test_a_lease_that_expires_mid_download_is_a_retryable_reason(
    nfc_provider: VsphereProvider, sim: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a powered-off VM, and a lease whose progress calls never come, read only
    # after its timeout (3 s)
    vm = await _off_with(nfc_provider, sim, _guest_bytes())
    monkeypatch.setattr(nfc.ExportLease, "start", lambda self: None)
    real_download = nfc.download

    async def late_download(lease: nfc.ExportLease, *args: Any) -> Path:
        await asyncio.sleep(5)
        return await real_download(lease, *args)

    monkeypatch.setattr(nfc, "download", late_download)

    # When the disk is read
    with pytest.raises(SourceInterrupted) as interrupted:
        async with nfc_provider.open_disk(vm, vm.disks[0].id):
            pass

    # Then the reason names the ended lease, and says it is retried
    assert "export lease ended" in str(interrupted.value)
    assert "retried with a new lease" in str(interrupted.value)


async def test_a_running_vm_is_refused_with_the_reason_and_nothing_left(
    nfc_provider: VsphereProvider, sim: Endpoint
) -> None:
    # Given a VM that is running
    vm = await nfc_provider.vm(VM)
    assert str(await nfc_provider.power_state(vm)).endswith("on")
    before = set(os.listdir(os.environ.get("TMPDIR", "/tmp")))

    # When its disk is opened for an NFC read
    with pytest.raises(ProviderError) as refused:
        async with nfc_provider.open_disk(vm, vm.disks[0].id):
            pass

    # Then vSphere's reason is named, and no download folder is left
    assert "export lease" in str(refused.value) and "powered-off" in str(refused.value)
    left = set(os.listdir(os.environ.get("TMPDIR", "/tmp"))) - before
    assert not [name for name in left if name.startswith("ferry-nfc-")]


async def test_where_the_datastore_path_has_no_flat_extent_only_the_export_reads(
    nfc_provider: VsphereProvider, sim: Endpoint
) -> None:
    # Given a powered-off VM on a datastore whose path serves no flat extent (vSAN)
    content = _guest_bytes()
    vm = await _off_with(nfc_provider, sim, content)
    datastore = make_provider(sim, caBundle=sim.cert_file)
    try:
        # When its disk is read over the datastore path, the reason is the missing file
        with pytest.raises(DatastoreFileMissing):
            async with datastore.open_disk(vm, vm.disks[0].id):
                pass
    finally:
        await datastore.close()

    # And through an export lease, it reads the guest's bytes
    async with nfc_provider.open_disk(vm, vm.disks[0].id) as reader:
        assert await reader.read(0, MIB) == content


def test_the_setting_is_checked() -> None:
    assert nfc.disk_transfer({}) == "datastore"
    assert nfc.disk_transfer({"diskTransfer": "nfc"}) == "nfc"
    with pytest.raises(ProviderError, match="diskTransfer is 'vddk'"):
        nfc.disk_transfer({"diskTransfer": "vddk"})


async def test_flow_three_gets_the_disks_downloaded_and_named_in_its_domain(
    nfc_provider: VsphereProvider, sim: Endpoint, tmp_path: Path
) -> None:
    # Given a powered-off VM on a datastore without flat reads (vSAN)
    content = _guest_bytes()
    vm = await _off_with(nfc_provider, sim, content)

    # When virt-v2v's input is asked for (flow 3, a full conversion)
    given = await nfc_provider.v2v_input(vm, tmp_path)

    # Then the domain names the downloaded disk as qemu opens it, a local
    # streamOptimized VMDK holding the guest's bytes, and nothing runs beside virt-v2v
    assert given.argv[:2] == ["-i", "libvirtxml"] and given.captive == [] and given.hold is None
    assert given.files == [given.argv[2]]
    domain = ElementTree.parse(given.argv[2]).getroot()
    [source_element] = domain.findall("./devices/disk/source")
    name = source_element.get("file", "")
    assert name.startswith("json:") and '"driver":"vmdk"' in name
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", name, str(back)], check=True)
    assert back.read_bytes() == content
    assert stat.S_IMODE((tmp_path / "nfc").stat().st_mode) == 0o700


async def test_a_read_that_fails_aborts_the_lease_it_shared(
    nfc_provider: VsphereProvider, sim: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a powered-off VM, and a download that breaks off
    vm = await _off_with(nfc_provider, sim, _guest_bytes())
    ended: list[bool] = []
    real_end = nfc.ExportLease.end

    async def recorded_end(self: nfc.ExportLease) -> None:
        ended.append(self.failed)
        await real_end(self)

    async def broken_download(lease: nfc.ExportLease, *args: Any) -> Path:
        raise ProviderError("the export stream broke off: test")

    monkeypatch.setattr(nfc.ExportLease, "end", recorded_end)
    monkeypatch.setattr(nfc, "download", broken_download)

    # When the disk is read
    with pytest.raises(ProviderError, match="broke off"):
        async with nfc_provider.open_disk(vm, vm.disks[0].id):
            pass

    # Then the lease was ended as failed (aborted), not completed nor left open
    assert ended == [True]


async def test_the_download_is_what_a_bandwidth_budget_paces(
    nfc_provider: VsphereProvider, sim: Endpoint
) -> None:
    # Given a powered-off VM, and the volume-service's copy under a budget
    vm = await _off_with(nfc_provider, sim, _guest_bytes())
    asked: list[int] = []

    async def budget(nbytes: int) -> None:
        asked.append(nbytes)

    reader = nfc_provider.open_disk(vm, vm.disks[0].id)

    # When the copy's pacing is placed (as the volume-service does) and the disk read
    rate = paced(reader, budget)
    async with reader:
        downloaded = Path(reader.qemu_source().options["file"]["filename"]).stat().st_size

    # Then the download asked the budget for every byte it moved from the source, and the
    # copy of the local file is left unpaced (it moves none of the source's bytes)
    assert rate is None
    assert sum(asked) == downloaded > 0
    # And a reader that moves nothing itself leaves the pacing to the copy
    plain = make_provider(sim, caBundle=sim.cert_file)
    try:
        assert paced(plain.open_disk(vm, vm.disks[0].id), budget) is budget
    finally:
        await plain.close()


async def test_a_stream_longer_than_the_disk_can_be_is_stopped(
    nfc_provider: VsphereProvider, sim: Endpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a powered-off VM, and an export stream bounded as if the disk were tiny
    # (a server that would send more than any VMDK of the disk could hold)
    vm = await _off_with(nfc_provider, sim, _guest_bytes())
    monkeypatch.setattr(nfc, "stream_bound", lambda capacity: 4096)

    # When the disk is read, the download stops with the reason, and nothing is left
    with pytest.raises(ProviderError, match="runs past 4096 bytes"):
        async with nfc_provider.open_disk(vm, vm.disks[0].id):
            pass
