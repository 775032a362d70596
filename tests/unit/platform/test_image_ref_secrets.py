"""A source description that carries an oVirt transfer URL (its path is the ticket, a
secret) never shows it in a repr, which is what log lines and tracebacks print."""

from __future__ import annotations

import logging

import pytest

from ferry.platform.images import ImageRef, from_qemu_source
from ferry.providers.base import QemuSource

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
