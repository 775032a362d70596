"""The imageio harness runs the real daemon: tickets served over TLS, gone when removed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from ovirt_imageio import client

from ferry.testing.ovirt.imageio import Imageio

MiB = 1 << 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imageio]:
    with Imageio(tmp_path_factory.mktemp("imageio")) as d:
        yield d


def test_ticket_serves_guest_bytes_and_extents_then_goes(daemon: Imageio, tmp_path: Path) -> None:
    img = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-f", "qcow2", str(img), "64M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 1M 1M", str(img)], check=True)
    ticket = daemon.serve(img, "qcow2", 64 * MiB)
    with client.ImageioClient(daemon.url(ticket), cafile=str(daemon.ca_file)) as c:
        assert c.size() == 64 * MiB
        data = [(e.start, e.length) for e in c.extents("zero") if not e.zero]
        assert data == [(1 * MiB, 1 * MiB)]
        buf = bytearray(4096)
        c.read(1 * MiB, buf)
        assert bytes(buf) == b"\x55" * 4096
    daemon.unserve(ticket)
    assert daemon.get_ticket(ticket) is None
    with pytest.raises(Exception, match="No such ticket"):
        client.ImageioClient(daemon.url(ticket), cafile=str(daemon.ca_file))


def test_tls_refuses_a_client_without_the_test_ca(daemon: Imageio, tmp_path: Path) -> None:
    img = tmp_path / "disk.raw"
    img.write_bytes(b"\0" * MiB)
    ticket = daemon.serve(img, "raw", MiB)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.ImageioClient(daemon.url(ticket))
