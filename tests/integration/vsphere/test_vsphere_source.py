"""Power, snapshots, trust and credentials of a vSphere source, against the simulator."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import vim
from vcsimkit import find_vm, make_provider, run

from ferry.proto.inventory import ConcernCode, PowerState
from ferry.providers.base import VmNotFound
from ferry.providers.vsphere.client import CertificateRefused, LoginRefused, thumbprint_of
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.server import Endpoint


async def test_guest_shutdown_through_tools_then_power_on(provider: VsphereProvider) -> None:
    # Given a running VM whose guest runs VMware Tools
    vm = await provider.vm("DC0_H0_VM0")
    assert await provider.power_state(vm) is PowerState.ON

    # When it is shut down, then powered on again
    forced = await provider.shutdown(vm, timeout=10)
    off = await provider.power_state(vm)
    await provider.power_on(vm)

    # Then the guest was asked (not forced), and the VM runs again
    assert not forced and off is PowerState.OFF
    assert await provider.power_state(vm) is PowerState.ON
    # And shutting down a VM that is off is harmless
    await provider.shutdown(vm, timeout=1)
    assert not await provider.shutdown(vm, timeout=1)


async def test_a_vm_without_tools_is_forced_off(provider: VsphereProvider, admin: Any) -> None:
    # Given a running VM whose guest has no VMware Tools to ask
    ref = find_vm(admin, "DC0_H0_VM1")
    spec = vim.vm.CloneSpec(location=vim.vm.RelocateSpec(), powerOn=False)
    clone = run(ref.CloneVM_Task(ref.parent, "no-tools", spec))
    run(clone.PowerOnVM_Task())
    assert clone.guest.toolsRunningStatus != "guestToolsRunning"
    vm = await provider.vm("no-tools")
    assert vm.power_state is PowerState.ON

    # When it is shut down / Then it had to be forced, and is off
    assert await provider.shutdown(vm, timeout=5)
    assert await provider.power_state(vm) is PowerState.OFF


async def test_ferry_snapshots_are_found_and_removed_by_the_next_run(
    vcsim: Endpoint, provider: VsphereProvider, admin: Any
) -> None:
    # Given a VM with a user's snapshot, and Ferry's snapshots left by a killed run
    ref = find_vm(admin, "DC0_H0_VM0")
    run(ref.CreateSnapshot_Task("user-keep", "", False, False))
    vm = await provider.vm("DC0_H0_VM0")
    await provider.snapshot(vm, "m1-precopy-1")
    await provider.snapshot(vm, "m1-precopy-2")
    left = await provider.vm(vm.id)
    await provider.close()  # the service dies; nothing is remembered

    # When a new provider (a restarted service) cleans up
    again = make_provider(vcsim, caBundle=vcsim.cert_file)
    try:
        removed = await again.remove_snapshots(vm)
        after = await again.vm(vm.id)
    finally:
        await again.close()

    # Then Ferry's are gone and the user's stays
    assert sorted(removed) == ["ferry-m1-precopy-1", "ferry-m1-precopy-2"]
    assert after.snapshots == ["user-keep"]
    # And Ferry's leftovers never counted as the user's snapshots
    assert len(left.snapshots) == 3
    [concern] = [c for c in left.concerns if c.code is ConcernCode.SNAPSHOTS]
    assert "ferry-" not in concern.message


async def test_a_vm_removed_mid_migration_is_not_found(
    provider: VsphereProvider, admin: Any
) -> None:
    # Given a VM the provider has seen, then destroyed at the source
    vm = await provider.vm("DC0_H0_VM1")
    ref = find_vm(admin, "DC0_H0_VM1")
    run(ref.PowerOffVM_Task())
    run(ref.Destroy_Task())

    # When it is powered on / Then it is reported missing by its id
    with pytest.raises(VmNotFound, match=vm.id):
        await provider.power_on(vm)


async def test_pinned_thumbprint_accepted_in_either_digest(vcsim: Endpoint) -> None:
    # Given the server's certificate pinned as SHA-1 and as SHA-256 (lower case, no colons)
    sha1 = make_provider(vcsim, thumbprint=vcsim.thumbprint)
    pem = Path(vcsim.cert_file).read_text()
    sha256 = thumbprint_of(ssl.PEM_cert_to_DER_cert(pem), "sha256").replace(":", "").lower()
    pinned = make_provider(vcsim, thumbprint=sha256)
    try:
        # When each checks the source / Then both log in
        await sha1.check()
        await pinned.check()
    finally:
        await sha1.close()
        await pinned.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"thumbprint": "00:" * 19 + "00"},  # a wrong pin
        {},  # no pin, no bundle: the system CAs do not know a self-signed server
    ],
)
async def test_untrusted_certificate_refused_showing_its_thumbprint(
    vcsim: Endpoint, settings: dict[str, str]
) -> None:
    # Given a provider that does not trust the server's certificate
    source = make_provider(vcsim, **settings)

    # When it checks the source / Then it refuses, naming the thumbprint it saw
    with pytest.raises(CertificateRefused) as refused:
        await source.check()
    assert refused.value.seen == vcsim.thumbprint
    assert vcsim.thumbprint in str(refused.value)


async def test_insecure_only_when_the_provider_says_so(vcsim: Endpoint) -> None:
    # Given a provider that says insecureSkipVerify
    source = make_provider(vcsim, insecureSkipVerify="true")
    try:
        # When it checks the source / Then it logs in without a bundle or pin
        await source.check()
    finally:
        await source.close()


async def test_refused_credentials_are_a_clear_reason_without_the_password(
    vcsim: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a secret with the wrong password
    wrong = "not-" + vcsim.password
    source = VsphereProvider.create(
        vcsim.url, {"caBundle": vcsim.cert_file}, {"user": vcsim.username, "password": wrong}
    )
    caplog.set_level(logging.DEBUG)

    # When it checks the source / Then the login is refused, naming the user only
    with pytest.raises(LoginRefused) as refused:
        await source.check()
    assert vcsim.username in str(refused.value)
    assert wrong not in str(refused.value) and wrong not in caplog.text
    assert wrong not in repr(source.session.credentials)
