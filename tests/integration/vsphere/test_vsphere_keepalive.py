"""Reads longer than vCenter's idle timeout keep their session; a power call after one
idles out logs in anew (issue #14).

The simulator here ends a session IDLE seconds after its last API call (its
``-idle-timeout``, govmomi's ``SessionIdleTimeout``: the session goes between one and
two timeouts later), and a read over /folder is no activity (``folder_sessions.go``).
Every read below lasts SPAN, more than twice the latest such end, so only the
keep-alive (``keepAliveSeconds``) can keep its cookie good; with it off, the same read
fails, which shows that the timeout is real.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from vcsimkit import datastore_dir, make_provider

from ferry.conversion_service import v2v
from ferry.conversion_service.settings import ConversionSettings
from ferry.conversion_service.v2v import run_captive
from ferry.platform.local.processes import LocalWorkloads
from ferry.proto.conversion import ConversionMode
from ferry.proto.inventory import PowerState, Vm, Volume
from ferry.providers.nbd import AsyncNbdClient
from ferry.providers.vsphere.client import same_session
from ferry.providers.vsphere.disks import SessionExpired
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim import arrange
from ferry.testing.vcsim.server import Endpoint, Vcsim

IDLE = 2.0  # the simulator's idle timeout: an idle session ends 2 to 4 s after its last call
SPAN = 9.0  # how long each read lasts
PACE = 1.0  # between two reads of one read
PING = "0.4"  # keepAliveSeconds while the keep-alive is on
BLOCK = 4096

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def idle_vcsim(vcsim_binary: Path) -> Iterator[Endpoint]:
    with Vcsim(idle_timeout=IDLE) as sim:
        assert sim.endpoint is not None
        yield sim.endpoint


def _seed(endpoint: Endpoint, vm_name: str) -> bytes:
    """Known bytes in the VM's flat extent (the model's disk is 1 MiB)."""
    content = os.urandom(1 << 20)
    with arrange.admin(endpoint) as si:
        (datastore_dir(si) / vm_name / "disk1-flat.vmdk").write_bytes(content)
    return content


def _offsets() -> Iterator[int]:
    for index in range(int(SPAN / PACE) + 1):
        yield index * BLOCK


async def _provider(endpoint: Endpoint, keepalive: str) -> VsphereProvider:
    return make_provider(endpoint, caBundle=endpoint.cert_file, keepAliveSeconds=keepalive)


def _refused(endpoint: Endpoint, url: str, cookie: str) -> bool:
    """Whether the simulator's /folder now refuses ``cookie`` (its session ended): the
    tests' own look, independent of the provider's."""
    request = urllib.request.Request(url, method="HEAD", headers={"Cookie": cookie})
    context = ssl.create_default_context(cafile=endpoint.cert_file)
    try:
        with urllib.request.urlopen(request, context=context, timeout=10):
            return False
    except urllib.error.HTTPError as error:
        return error.code == 401


async def test_a_copy_longer_than_the_idle_timeout_keeps_its_session(
    idle_vcsim: Endpoint,
) -> None:
    # Given a VM's disk with known bytes, and a provider whose keep-alive is on
    content = _seed(idle_vcsim, "DC0_H0_VM0")
    provider = await _provider(idle_vcsim, PING)
    try:
        vm = await provider.vm("DC0_H0_VM0")
        # When the disk is read, a block at a time, over more than twice the idle timeout,
        # both by the reader's own HTTP reads and through its nbdkit curl (the copy
        # engine's path)
        async with provider.open_disk(vm, vm.disks[0].id) as reader:
            socket = (await reader.nbd_uri()).split("socket=", 1)[1]
            nbd = await AsyncNbdClient.connect(socket)
            try:
                for offset in _offsets():
                    direct = await reader.read(offset, BLOCK)
                    served = await nbd.read(offset + BLOCK, BLOCK)
                    # Then every read gets the disk's bytes
                    assert direct == content[offset : offset + BLOCK]
                    assert served == content[offset + BLOCK : offset + 2 * BLOCK]
                    await asyncio.sleep(PACE)
            finally:
                await nbd.close()
            # And the keep-alive ran for the reader ...
            assert provider.session.keepalive.running
        # ... and stops with it
        assert not provider.session.keepalive.running
    finally:
        await provider.close()


async def test_without_the_keep_alive_the_same_copy_loses_its_session(
    idle_vcsim: Endpoint,
) -> None:
    # Given the same disk and a provider whose keep-alive is off
    content = _seed(idle_vcsim, "DC0_H0_VM0")
    provider = await _provider(idle_vcsim, "0")
    try:
        vm = await provider.vm("DC0_H0_VM0")
        # When the disk is read the same way
        with pytest.raises(SessionExpired, match="session ended at offset") as refused:
            async with provider.open_disk(vm, vm.disks[0].id) as reader:
                for offset in _offsets():
                    assert await reader.read(offset, BLOCK) == content[offset : offset + BLOCK]
                    await asyncio.sleep(PACE)
        # Then a read fails with the ended session as its reason, before the span is over
        assert "retried with a new login" in str(refused.value)
    finally:
        await provider.close()


def _slow_reader(folder: Path) -> Path:
    """In virt-v2v's place: reads each disk of the ``-i libvirtxml`` document it is
    given with one qemu-io, a block every PACE seconds for SPAN seconds over one NBD
    connection, each block checked against the pattern the tests write; exits non-zero
    when a read fails."""
    commands: list[str] = []
    for offset in _offsets():
        commands += ["-c", f"read -P 0x5a {offset} {BLOCK}", "-c", f"sleep {int(PACE * 1000)}"]
    script = folder / "slow-reader"
    script.write_text(
        f"#!{sys.executable}\n"
        "import subprocess, sys, xml.etree.ElementTree as ET\n"
        "document = sys.argv[sys.argv.index('libvirtxml') + 1]\n"
        "for source in ET.parse(document).iter('source'):\n"
        "    if source.get('file'):\n"
        f"        reads = ['qemu-io', '-r', source.get('file'), *{commands!r}]\n"
        "        if subprocess.run(reads).returncode:\n"
        "            sys.exit('slow-reader: a read of the source failed')\n"
    )
    script.chmod(0o755)
    return script


def _pattern(endpoint: Endpoint, vm_name: str) -> None:
    with arrange.admin(endpoint) as si:
        (datastore_dir(si) / vm_name / "disk1-flat.vmdk").write_bytes(b"\x5a" * (1 << 20))


async def _convert_slowly(provider: VsphereProvider, vm: Vm, workdir: Path) -> int:
    """The provider's virt-v2v input with its captive nbdkits around the slow reader, the
    provider's hold held around the run as the conversion-service holds it."""
    given = await provider.v2v_input(vm, workdir)
    assert given.hold is not None
    # (the input's repr, as a log line or traceback would show it, holds no cookie)
    assert "vmware_soap_session" not in repr(given)
    # (each disk is served on a Unix socket in the private work directory, no TCP port)
    for helper in given.captive:
        assert any(arg.startswith(f"--unix={workdir}/") for arg in helper), helper
        assert not any(arg.startswith(("--port", "--ipaddr")) for arg in helper), helper
    argv = run_captive([str(_slow_reader(workdir)), *given.argv], given.captive)
    async with given.hold:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        status = await process.wait()
        if status:
            raise RuntimeError(f"the conversion failed: exit status {status}")
    return status


async def test_a_conversion_longer_than_the_idle_timeout_keeps_its_session(
    idle_vcsim: Endpoint, tmp_path: Path
) -> None:
    # Given a VM whose disk holds a known pattern, and a provider whose keep-alive is on
    _pattern(idle_vcsim, "DC0_H0_VM1")
    provider = await _provider(idle_vcsim, PING)
    try:
        vm = await provider.vm("DC0_H0_VM1")
        # When a reader in virt-v2v's place reads its captive nbdkit curl slowly
        status = await _convert_slowly(provider, vm, tmp_path)
        # Then every block read arrives, checked (the reader's exit status)
        assert status == 0
        assert not provider.session.keepalive.running
    finally:
        await provider.close()


async def test_a_conversion_that_lost_its_session_says_so(
    idle_vcsim: Endpoint, tmp_path: Path
) -> None:
    # Given the same VM and a provider whose keep-alive is off
    _pattern(idle_vcsim, "DC0_H0_VM1")
    provider = await _provider(idle_vcsim, "0")
    try:
        vm = await provider.vm("DC0_H0_VM1")
        # When the slow reader runs past the session's end
        with pytest.raises(SessionExpired) as refused:
            await _convert_slowly(provider, vm, tmp_path)
        # Then the failure's reason is the ended session, chained to the reader's failure
        reason = str(refused.value)
        assert f"ended during the conversion of VM {vm.id}" in reason
        assert idle_vcsim.host in reason and "logs in anew" in reason
        assert isinstance(refused.value.__cause__, RuntimeError)
        # And no secret is in it
        assert "vmware_soap_session" not in reason and idle_vcsim.password not in reason
    finally:
        await provider.close()


async def test_a_power_call_after_the_session_idled_out_logs_in_anew(
    idle_vcsim: Endpoint,
) -> None:
    # Given a provider that made a call, then nothing while its session idled out
    provider = await _provider(idle_vcsim, PING)
    try:
        vm = await provider.vm("DC0_H0_VM0")
        cookie = await asyncio.to_thread(provider.session.cookie)
        file = provider.open_disk(vm, vm.disks[0].id)  # (not opened: only its URL)
        deadline = asyncio.get_running_loop().time() + 30
        while not await asyncio.to_thread(_refused, idle_vcsim, file.url, cookie):
            assert asyncio.get_running_loop().time() < deadline, "the session never idled out"
            await asyncio.sleep(0.5)

        # When the VM is powered off and on again
        await provider.shutdown(vm, timeout=5)
        await provider.power_on(vm)

        # Then both calls worked, on a new session
        assert await provider.power_state(vm) is PowerState.ON
        assert await asyncio.to_thread(provider.session.cookie) != cookie
    finally:
        await provider.close()


async def test_the_conversion_service_fails_with_the_ended_session_as_its_reason(
    idle_vcsim: Endpoint, tmp_path: Path
) -> None:
    # Given a full conversion of the VM by the conversion-service, the slow reader in
    # virt-v2v's place, and a provider whose keep-alive is off
    _pattern(idle_vcsim, "DC0_H0_VM1")
    provider = await _provider(idle_vcsim, "0")
    work = tmp_path / "work"
    work.mkdir()
    settings = ConversionSettings(
        kill_grace_seconds=3.0, work_dir=work, accel="tcg", virt_v2v=str(_slow_reader(tmp_path))
    )
    converter = v2v.Converter(settings, tmp_path / "data", LocalWorkloads())
    try:
        vm = await provider.vm("DC0_H0_VM1")
        cookie = await asyncio.to_thread(provider.session.cookie)
        job = v2v.Job(
            migration="mig-1",
            vm_key="vm-1",
            mode=ConversionMode.FULL,
            inventory=vm,
            volumes=blank_volumes(tmp_path / "volumes", vm),
            timeout_seconds=120,
            source=provider,
        )
        # When it runs past the session's end
        with pytest.raises(v2v.ConversionError) as failed:
            await converter.convert(job)
        # Then its reason is the ended session, one the service tries again
        assert f"ended during the conversion of VM {vm.id}" in failed.value.reason
        assert failed.value.transient
        # And the session's cookie is nowhere in the run's log
        assert failed.value.log is not None
        logged = failed.value.log.read_text()
        assert "slow-reader: a read of the source failed" in logged
        assert cookie.split("=", 1)[1].strip('"') not in logged
    finally:
        await provider.close()


async def test_a_session_ended_by_an_administrator_is_marked_lost_not_logged_in_again(
    vcsim: Endpoint, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a disk open for a copy, its session held by a keep-alive
    _seed(vcsim, "DC0_H0_VM0")
    provider = await _provider(vcsim, "0.2")
    try:
        vm = await provider.vm("DC0_H0_VM0")
        async with provider.open_disk(vm, vm.disks[0].id) as reader:
            hold = reader._hold
            assert hold is not None and provider.session.keepalive.running
            cookie = hold.cookie
            # When an administrator ends Ferry's session
            manager = admin.RetrieveContent().sessionManager
            mine = manager.currentSession.key
            manager.TerminateSession(
                [x.key for x in manager.sessionList if x.key != mine and x.key in cookie]
            )
            # Then the keep-alive finds it ended and marks the read's hold lost ...
            deadline = asyncio.get_running_loop().time() + 20
            while not hold.lost:
                assert asyncio.get_running_loop().time() < deadline, "the loss went unseen"
                await asyncio.sleep(0.1)
            # ... without logging in again behind the reader's back
            assert provider.session.alive(cookie) is False
            assert same_session(provider.session._si._stub.cookie, cookie)
            # And the read through the dead cookie names the ended session
            with pytest.raises(SessionExpired):
                await reader.read(0, BLOCK)
        # And the warning names the read, never the cookie
        said = [r.getMessage() for r in caplog.records if "ended while" in r.getMessage()]
        assert said and "the read of disk" in said[0]
        assert all(cookie.split("=", 1)[1].strip('"') not in r.getMessage() for r in caplog.records)
        # And the next call logs in anew
        await provider.power_on(vm)
        assert await asyncio.to_thread(provider.session.cookie) != cookie
    finally:
        await provider.close()


def blank_volumes(folder: Path, vm: Vm) -> list[Volume]:
    """A raw target file per disk, as the local platform binds them."""
    folder.mkdir(parents=True)
    volumes = []
    for index, disk in enumerate(vm.disks):
        path = folder / f"disk-{index}.img"
        with path.open("wb") as handle:
            handle.truncate(disk.capacity)
        volumes.append(
            Volume(
                disk_id=disk.id,
                name=f"disk-{index}",
                size=disk.capacity,
                capacity=disk.capacity,
                path=str(path),
                format="raw",
                phase="Bound",
            )
        )
    return volumes
