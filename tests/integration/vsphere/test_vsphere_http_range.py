"""A vSphere disk read by a copy off the volume-service's host: ranged GETs over HTTPS.

What a transfer pod gets (``ImageRef.for_remote_workload``) is the datastore path with
the reader's session cookie and the Provider's trust as PEM; the pod's copy opens it
with :class:`~ferry.platform.copy.httprange.HttpRangeSource`. These tests read it as
the pod would, here, against the API simulator.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from vcsimkit import copy_to_raw, datastore_dir, make_provider

from ferry.platform import errors
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef, from_qemu_source
from ferry.proto.inventory import Extent
from ferry.providers.base import HttpRange
from ferry.providers.vsphere.provider import VsphereProvider
from ferry.testing.vcsim.server import Endpoint

MIB = 1024 * 1024


def _place(admin: Any, vm: str) -> bytes:
    content = os.urandom(256 * 1024) + bytes(512 * 1024) + os.urandom(256 * 1024)
    (datastore_dir(admin) / vm / "disk1-flat.vmdk").write_bytes(content)
    return content


async def test_a_pods_copy_reads_the_flat_extent_over_https_with_the_readers_cookie(
    provider: VsphereProvider, admin: Any, tmp_path: Path
) -> None:
    # Given a powered-off VM whose disk holds known bytes, open for a copy
    vm = await provider.vm("DC0_H0_VM0")
    await provider.shutdown(vm, timeout=5)
    content = _place(admin, "DC0_H0_VM0")
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        # When the copy engine reads what a pod is given (no socket of this host)
        ref = from_qemu_source(reader.qemu_source()).for_remote_workload()
        assert ref.qemu_options is None and not ref.nbd_socket and ref.size is None
        ref = ImageRef(path=ref.path, size=MIB, http_range=ref.http_range)

        result = await copy_to_raw(ref, tmp_path)

    # Then the target holds the guest's bytes, verified by the engine's checksums
    assert (tmp_path / "disk.raw").read_bytes() == content
    assert result.size == MIB and result.source == result.target
    # And the cookie never shows in the description's repr (a log line, a traceback)
    assert ref.http_range is not None and ref.http_range.cookie
    assert ref.http_range.cookie not in repr(ref)


async def test_only_the_given_extents_are_read(
    provider: VsphereProvider, admin: Any, tmp_path: Path
) -> None:
    # Given a disk and a delta's extents (what CBT said changed)
    vm = await provider.vm("DC0_H0_VM0")
    await provider.shutdown(vm, timeout=5)
    content = _place(admin, "DC0_H0_VM0")
    async with provider.open_disk(vm, vm.disks[0].id) as reader:
        given = from_qemu_source(reader.qemu_source()).for_remote_workload()
        ref = ImageRef(size=MIB, http_range=given.http_range, extents=[Extent(4096, 8192)])
        buffer = bytearray(8192)

        def read() -> list[Extent]:
            source = open_source(ref)
            try:
                source.reader().readinto(4096, memoryview(buffer))
                return list(source.extents())
            finally:
                source.close()

        # When its extents are listed and read
        extents = await asyncio.to_thread(read)
    # Then only those, with the disk's bytes there
    assert extents == [Extent(4096, 8192)]
    assert bytes(buffer) == content[4096 : 4096 + 8192]
    # And an extent off the disk is refused before any read
    with pytest.raises(errors.InvalidSourceError, match="off the disk"):
        open_source(ImageRef(size=MIB, http_range=given.http_range, extents=[Extent(MIB, 1)]))


async def test_a_server_the_trust_does_not_verify_is_refused(
    vcsim: Endpoint, admin: Any, tmp_path: Path
) -> None:
    # Given what a pod gets for a disk, with another server's certificate as its CA
    provider = make_provider(vcsim, caBundle=vcsim.cert_file)
    try:
        vm = await provider.vm("DC0_H0_VM0")
        await provider.shutdown(vm, timeout=5)
        _place(admin, "DC0_H0_VM0")
        async with provider.open_disk(vm, vm.disks[0].id) as reader:
            given = from_qemu_source(reader.qemu_source()).for_remote_workload()
            assert given.http_range is not None
            other = _self_signed(tmp_path)
            wrong = ImageRef(
                size=MIB,
                http_range=HttpRange(url=given.http_range.url, size=MIB, ca=other),
            )
            # When a copy opens it, then it is refused with the trust's words
            with pytest.raises(errors.InvalidSourceError, match="Provider's trust does not"):
                await asyncio.to_thread(open_source, wrong)
            # And without the cookie the server's 401 is a transient source error
            anonymous = ImageRef(
                size=MIB,
                http_range=HttpRange(url=given.http_range.url, size=MIB, ca=given.http_range.ca),
            )
            with pytest.raises(errors.SourceIOError, match="401"):
                await asyncio.to_thread(open_source, anonymous)
    finally:
        await provider.close()


def _self_signed(tmp_path: Path) -> str:
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    text = cert.read_text()
    ssl.PEM_cert_to_DER_cert(text)  # a certificate indeed
    return text


async def test_a_pinned_server_is_trusted_by_its_own_certificate_in_the_pod(
    vcsim: Endpoint, admin: Any
) -> None:
    # Given a Provider that pins the server's thumbprint (no CA bundle at all)
    provider = make_provider(vcsim, thumbprint=vcsim.thumbprint)
    try:
        vm = await provider.vm("DC0_H0_VM0")
        await provider.shutdown(vm, timeout=5)
        content = _place(admin, "DC0_H0_VM0")
        async with provider.open_disk(vm, vm.disks[0].id) as reader:
            given = from_qemu_source(reader.qemu_source()).for_remote_workload()
            assert given.http_range is not None and given.http_range.ca
            buffer = bytearray(4096)

            def read() -> None:
                source = open_source(given)
                try:
                    source.reader().readinto(MIB - 4096, memoryview(buffer))
                finally:
                    source.close()

            # When a pod's copy reads it, trusting only the pinned certificate
            await asyncio.to_thread(read)
        # Then it reads the disk's bytes
        assert bytes(buffer) == content[-4096:]
    finally:
        await provider.close()
