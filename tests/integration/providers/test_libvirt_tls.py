"""A libvirt host's backup jobs read over TCP with TLS, as Ferry reads a remote host's.

The provider runs with ``backupTransport: tls`` against the machine's own libvirtd
(no second host here: ``qemu:///system`` reaches the daemon, ``backupHost:
localhost`` the jobs' NBD servers, exactly the path of a remote host's jobs from
there on): QEMU's NBD server with TLS on a TCP port, its certificate from the test
CA in qemu.conf's backup folder, Ferry's client certificate from the Secret, and
a local ``qemu-nbd`` relay per disk. Skipped without libvirt, failed in CI.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from ferry.proto.inventory import Extent, PowerState, ProviderType
from ferry.providers import factory
from ferry.providers.base import ProviderError
from ferry.providers.libvirt import backup, exports, offline, paused
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.providers.nbd import NbdClient
from ferry.testing import backup_tls, libvirtd

MiB = 1024 * 1024
BLOCK = 64 * 1024


@pytest.fixture(scope="module")
def pems() -> backup_tls.ClientPems:
    libvirtd.uri_or_skip()
    return backup_tls.ensure_or_skip()


@pytest.fixture
def guest() -> Iterator[libvirtd.Guest]:
    conn = libvirt.open(libvirtd.uri_or_skip())
    made = libvirtd.define_guest(conn, [32 * MiB], fill=[(0, MiB, 0x11), (8 * MiB, 2 * MiB, 0x22)])
    yield made
    made.remove()
    conn.close()


class _Spec:
    def __init__(self, settings: dict[str, str]) -> None:
        self.type = ProviderType.LIBVIRT
        self.url = libvirtd.URI
        self.settings = settings


def _free_ports(count: int) -> int:
    return int(backup_tls.free_ports(count).split("-")[0])


@contextlib.asynccontextmanager
async def _provider(
    secret: dict[str, str], first: int, count: int = 4
) -> AsyncIterator[LibvirtProvider]:
    """A provider reading this machine's jobs over TLS on ports ``first``…; closed and its
    work directory removed after."""
    work = libvirtd.scratch_dir("ferry-work-")
    settings = {
        **backup_tls.provider_settings(work),
        "backupPorts": f"{first}-{first + count - 1}",
    }
    made = factory.create(_Spec(settings), secret)
    assert isinstance(made, LibvirtProvider)
    try:
        yield made
    finally:
        await made.close()
        shutil.rmtree(work, ignore_errors=True)


def _job(guest: libvirtd.Guest) -> Any:
    try:
        return guest.dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return None


def _scratch_left(guest: libvirtd.Guest) -> list[str]:
    return [p for p in os.listdir(guest.root) if p.endswith(".scratch")]


async def test_full_then_incremental_over_tls_through_local_relays(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest
) -> None:
    async with _provider(pems.secret(), _free_ports(4)) as provider:
        work = provider.workdir
        vm = await provider.vm(guest.name)
        # Given a running domain whose jobs serve over TCP with TLS
        async with provider.changes(vm, None) as full:
            job = _job(guest)
            assert "transport='tcp'" in job and "tls='yes'" in job
            # When the full view is listed and read through its relay's socket
            extents = await full.changed_extents("vda")
            relay, export = full.nbd_export("vda")
            client = NbdClient(relay, export)
            try:
                data = client.read(0, client.size)
            finally:
                client.close()
            scratch_during = _scratch_left(guest)
            first = full.checkpoint
        # Then it lists the written ranges and reads the disk's bytes
        assert extents == [Extent(0, MiB), Extent(8 * MiB, 2 * MiB)]
        assert hashlib.sha256(data).hexdigest() == libvirtd.qcow2_sha256(guest.disks["vda"])
        assert len(scratch_during) == 1  # next to the disk on the host, while the job ran
        # When the guest writes and the next round asks what changed since
        guest.write("vda", 4 * MiB, BLOCK, 0xAB)
        async with provider.changes(vm, first) as delta:
            changed = await delta.changed_extents("vda")
            written = await delta.read("vda", 4 * MiB, BLOCK)
        # Then exactly the written block, read from the host's dirty bitmap over TLS
        assert changed == [Extent(4 * MiB, BLOCK)]
        assert written == b"\xab" * BLOCK
        # And a cold read of the running domain goes the same way
        async with provider.open_disk(vm, "vda") as disk:
            assert await disk.read(4 * MiB, 4) == b"\xab" * 4
        # And nothing is left: no job, no scratch file, no relay
        assert _job(guest) is None
        assert _scratch_left(guest) == []
        assert not Path(relay).exists()
        assert [p for p in os.listdir(work) if not p.startswith("ferry-tls-")] == []
        # and the credentials folder goes with the provider
        await provider.close()
        assert os.listdir(work) == []


async def test_a_port_another_program_holds_is_skipped(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _free_ports(2)
    # (the ports in order, so the held one is tried first)
    monkeypatch.setattr(backup.random, "sample", lambda ports, k: list(ports)[:k])
    async with _provider(pems.secret(), first, count=2) as provider:
        vm = await provider.vm(guest.name)
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", first))
            squatter.listen()
            # When a job starts while the range's first port is taken
            async with provider.changes(vm, None) as view:
                job = _job(guest)
                assert await view.read("vda", 0, 4) == b"\x11" * 4
        # Then it served on the other one
        assert f"port='{first + 1}'" in job


async def test_a_host_that_does_not_trust_ferrys_certificate_refuses_and_nothing_is_left(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest, tmp_path: Path
) -> None:
    # Given a client certificate of another CA (Ferry trusts both CAs, the host only its own)
    foreign = backup_tls.foreign_client(tmp_path / "foreign")
    secret = {
        "backupCACert": pems.ca + foreign.ca,
        "backupClientCert": foreign.cert,
        "backupClientKey": foreign.key,
    }
    async with _provider(secret, _free_ports(4)) as provider:
        vm = await provider.vm(guest.name)
        # When a disk is read
        with pytest.raises(ProviderError, match="could not be read over TLS") as caught:
            async with provider.open_disk(vm, "vda") as disk:
                await disk.read(0, 4)
        # Then the reason names the job's address, and no key is in it
        assert "localhost:" in str(caught.value)
        assert foreign.key.strip().splitlines()[1] not in str(caught.value)
        # and the job it began is ended, its scratch file gone
        assert _job(guest) is None
        assert _scratch_left(guest) == []


async def test_without_the_pems_preflight_says_which_and_no_job_begins(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest
) -> None:
    async with _provider({"backupCACert": pems.ca}, _free_ports(4)) as provider:
        vm = await provider.vm(guest.name)
        reasons = await provider.preflight(vm, warm=True)
        [reason] = [r for r in reasons if "TLS" in r]
        assert "backupClientCert, backupClientKey" in reason
        with pytest.raises(exports.TransportError, match="backupClientCert"):
            async with provider.changes(vm, None):
                pass
        assert _job(guest) is None


async def test_a_shut_off_domain_is_read_started_paused_and_left_off(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest
) -> None:
    async with _provider(pems.secret(), _free_ports(4)) as provider:
        # Given a tracked domain that wrote, then was powered off (the cutover)
        vm = await provider.vm(guest.name)
        async with provider.changes(vm, None) as full:
            first = full.checkpoint
        guest.write("vda", 16 * MiB, 4096, 0xEE)
        await provider.shutdown(vm, timeout=0.5)
        assert not guest.dom.isActive()
        # When the last delta is read, its files being on the host (read over TLS)
        async with provider.changes(vm, first) as last:
            state = guest.dom.state(0)[0]
            changed = await last.changed_extents("vda")
            data = await last.read("vda", 16 * MiB, 4096)
            assert last.checkpoint == first  # nothing can change while paused
        # Then it ran paused (its CPUs stopped) only while read, and is off again
        assert state == libvirt.VIR_DOMAIN_PAUSED
        assert not guest.dom.isActive()
        assert changed == [Extent(16 * MiB, BLOCK)] and data == b"\xee" * 4096
        # And a cold read of the off domain goes the same way
        async with provider.open_disk(vm, "vda") as disk:
            assert await disk.read(16 * MiB, 4) == b"\xee" * 4
        assert not guest.dom.isActive()
        # And removing its checkpoint leaves no checkpoint and no bitmap in its file
        await provider.remove_checkpoint(vm, first)
        await provider.remove_checkpoint(vm, first)  # already gone: no start, no error
        assert await provider.checkpoints(vm) == []
        assert offline.bitmaps(str(guest.disks["vda"])) == []
        assert not guest.dom.isActive()
        assert _job(guest) is None and _scratch_left(guest) == []


async def test_a_paused_start_a_killed_service_left_is_ended_and_no_one_elses(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest
) -> None:
    async with _provider(pems.secret(), _free_ports(4)) as provider:
        vm = await provider.vm(guest.name)
        await provider.shutdown(vm, timeout=0.5)
        dom = guest.dom
        # Given the domain started paused by a Ferry that was then killed (its mark, and
        # no view of this process holding it)
        paused.start(dom, vm.name)
        paused._OPEN.discard(dom.UUIDString())
        # When the next round looks at it
        assert await provider.power_state(vm) == PowerState.ON
        async with provider.changes(vm, None) as view:
            inner = view._inner  # type: ignore[attr-defined]
        # Then it was destroyed first and read as the off domain it was
        assert isinstance(inner, paused.PausedView)
        assert not dom.isActive()
        # And a domain someone else started paused is not Ferry's to end
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        assert not await provider.release_leftovers(vm)
        assert dom.isActive()


async def test_a_round_run_again_takes_over_the_job_its_killed_attempt_left_on_tcp(
    pems: backup_tls.ClientPems, guest: libvirtd.Guest
) -> None:
    async with _provider(pems.secret(), _free_ports(4)) as provider:
        vm = await provider.vm(guest.name)
        async with provider.changes(vm, None) as full:
            first = full.checkpoint
        guest.write("vda", 4 * MiB, BLOCK, 0xAB)
        # Given a delta round whose service was killed with its job on TCP still open
        killed = provider.changes(vm, first)
        await killed.__aenter__()
        left_job, left_checkpoint = _job(guest), killed.checkpoint
        # When the round runs again
        async with provider.changes(vm, first) as again:
            job = _job(guest)
            changed = await again.changed_extents("vda")
            data = await again.read("vda", 4 * MiB, BLOCK)
            taken = again.checkpoint
        # Then it read the same job (same port, same checkpoint) instead of a new one
        assert job == left_job and taken == left_checkpoint
        assert changed == [Extent(4 * MiB, BLOCK)] and data == b"\xab" * BLOCK
        # and the job is ended with the round
        assert _job(guest) is None and _scratch_left(guest) == []
        await killed.__aexit__(None, None, None)  # (its relays: gone with a killed process)
