"""The copy engine reading an oVirt disk over HTTPS from the real ovirt-imageio daemon.

What the populator pod does in a cluster, where the volume-service's sockets are out of
reach: ranged GETs on the transfer URL, the zero extents skipped, the daemon's
certificate checked against the CA's PEM, and no message naming the ticket.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.platform import errors
from ferry.platform.copy import engine
from ferry.platform.copy.source import open_source
from ferry.platform.images import ImageRef
from ferry.proto.inventory import Extent
from ferry.testing.ovirt.imageio import Imageio, make_ca

MiB = 1 << 20


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imageio]:
    with Imageio(tmp_path_factory.mktemp("imageio")) as d:
        yield d


def _disk(tmp_path: Path) -> Path:
    img = tmp_path / "disk.raw"
    subprocess.run(["truncate", "-s", "8M", str(img)], check=True)
    with img.open("r+b") as f:
        f.seek(1 * MiB)
        f.write(b"\x55" * MiB)
        f.seek(5 * MiB)
        f.write(b"tail-of-disk")
    return img


def test_a_transfer_url_is_read_with_its_zero_extents_skipped(
    daemon: Imageio, tmp_path: Path
) -> None:
    img = _disk(tmp_path)
    ticket = daemon.serve(img, "raw", 8 * MiB)
    ref = ImageRef(url=daemon.url(ticket), ca=daemon.ca_file.read_text())
    try:
        source = open_source(ref)
        try:
            data = list(source.extents())
            copied = engine.digest(source).digest
        finally:
            source.close()
    finally:
        daemon.unserve(ticket)
    assert source.size == 8 * MiB
    assert data and all(e.offset >= 1 * MiB for e in data) and Extent(0, 1 * MiB) not in data
    assert copied == engine.digest(open_source(ImageRef(path=str(img)))).digest


def test_a_gone_ticket_or_another_ca_fails_without_naming_the_ticket(
    daemon: Imageio, tmp_path: Path
) -> None:
    img = _disk(tmp_path)
    ticket = daemon.serve(img, "raw", 8 * MiB)
    url = daemon.url(ticket)
    foreign = make_ca(tmp_path / "other")[0].read_text()  # a CA that did not sign it
    with pytest.raises(errors.InvalidSourceError, match="CA does not verify") as untrusted:
        open_source(ImageRef(url=url, ca=foreign))
    assert untrusted.value.permanent  # no retry fixes a certificate
    daemon.unserve(ticket)
    with pytest.raises(errors.SourceGoneError) as gone:
        open_source(ImageRef(url=url, ca=daemon.ca_file.read_text()))
    for failure in (untrusted.value, gone.value):
        assert ticket not in str(failure)
    assert "404" in str(gone.value) or "403" in str(gone.value)
