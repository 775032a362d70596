"""A source description that carries an oVirt transfer URL (its path is the ticket, a
secret) never shows it in a repr, which is what log lines and tracebacks print."""

from __future__ import annotations

import logging

import pytest

from ferry.platform.images import ImageRef, from_qemu_source
from ferry.platform.kubernetes import fillpod
from ferry.platform.volumes import VolumeError
from ferry.proto.inventory import Extent
from ferry.providers.base import NbdTls, QemuSource

TICKET = "6b1f0f9e-secret-ticket"
URL = f"https://imageio.example:54322/images/{TICKET}"


def test_the_transfer_url_is_in_no_repr_of_the_source(caplog: pytest.LogCaptureFixture) -> None:
    # Given a qemu source of an oVirt disk and the ref a workload is handed
    qemu = QemuSource(format="raw", options={"driver": "raw", "file": {}}, url=URL, ca="PEM")
    ref = from_qemu_source(qemu)
    remote = ref.for_remote_workload()
    # Then the URL travels (a workload reads it) but no repr, str or log line shows it
    assert remote.url == URL
    for shown in (repr(qemu), str(qemu), repr(ref), str(remote), f"{[ref, qemu]}"):
        assert TICKET not in shown and "url=<hidden>" in shown
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("copying %s from %r", ref, qemu)
    assert TICKET not in caplog.text
    # and a ref without a URL says so plainly
    assert "url=''" in repr(ImageRef(path="/disk.raw"))


def test_a_tls_export_travels_to_a_pod_with_its_key_in_no_repr() -> None:
    # Given a remote libvirt host's job over TLS, read here through a local relay
    tls = NbdTls(host="kvm-7", port=10810, export="ferry-vda", ca="CA", cert="CERT",
                 key="-----BEGIN PRIVATE KEY-----\nsecret-key-bytes\n")  # fmt: skip
    extents = [Extent(0, 4096)]
    ref = ImageRef(path="db/vda", nbd_socket="/run/relay.sock", size=1 << 20,
                   extents=extents, snapshot="a>b", nbd_tls=tls)  # fmt: skip
    # When a pod is handed the source
    remote = fillpod.pod_source(ref)
    # Then it reads the host's export itself (no socket of this host), same extents
    assert remote.nbd_socket == "" and remote.nbd_tls == tls
    assert (remote.extents, remote.snapshot, remote.size) == (extents, "a>b", 1 << 20)
    # and no repr shows the key (nor the certificate)
    for shown in (repr(tls), repr(ref), repr(remote), f"{[remote]}"):
        assert "secret-key-bytes" not in shown and "CERT" not in shown
    # while a socket-only source is still refused for a pod
    with pytest.raises(VolumeError, match="Unix socket"):
        fillpod.pod_source(ImageRef(path="db/vda", nbd_socket="/run/relay.sock"))
