"""A ranged-HTTPS source against servers that do not answer as asked.

A local HTTPS server (its own self-signed certificate, given as the only CA) plays a
datastore path that ignores the range, answers short, or asks for a login; the source
must refuse each with a clear reason and never read more than it asked for.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.platform import errors
from ferry.platform.copy.httprange import HttpRangeSource
from ferry.platform.images import ImageRef
from ferry.providers.base import HttpRange

SIZE = 1 << 20
DISK = bytes(range(256)) * (SIZE // 256)


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "honest"
    cookies: list[str] = []

    def log_message(self, *_: object) -> None:
        pass

    def do_GET(self) -> None:
        type(self).cookies.append(self.headers.get("Cookie", ""))
        if self.headers.get("Cookie") != "vmware_soap_session=s3cret":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = (int(x) for x in self.headers["Range"].split("=")[1].split("-"))
        body = DISK[first : last + 1]
        if self.mode == "whole":  # ignores the range: the whole (large) file
            body = DISK * 4
        elif self.mode == "short":
            body = body[: len(body) // 2]
        self.send_response(200 if self.mode == "whole" else 206)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pems")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


@pytest.fixture
def server(pems: tuple[Path, Path]) -> Iterator[tuple[str, str]]:
    key, cert = pems
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.mode, _Handler.cookies = "honest", []
    try:
        yield (
            f"https://127.0.0.1:{httpd.server_address[1]}/folder/vm/disk-flat.vmdk",
            cert.read_text(),
        )
    finally:
        httpd.shutdown()
        httpd.server_close()


def _source(url: str, ca: str, cookie: str = "vmware_soap_session=s3cret") -> HttpRangeSource:
    return HttpRangeSource(ImageRef(http_range=HttpRange(url=url, size=SIZE, cookie=cookie, ca=ca)))


def _read(source: HttpRangeSource, offset: int, length: int) -> bytes:
    buffer = bytearray(length)
    reader = source.reader()
    try:
        reader.readinto(offset, memoryview(buffer))
    finally:
        reader.close()
    return bytes(buffer)


def test_ranges_come_back_with_the_cookie_sent(server: tuple[str, str]) -> None:
    url, ca = server
    source = _source(url, ca)
    assert _read(source, 4096, 65536) == DISK[4096 : 4096 + 65536]
    assert set(_Handler.cookies) == {"vmware_soap_session=s3cret"}


def test_a_server_that_ignores_the_range_is_refused_without_reading_it_whole(
    server: tuple[str, str],
) -> None:
    url, ca = server
    source = _source(url, ca)
    _Handler.mode = "whole"
    with pytest.raises(errors.SourceIOError, match="answered more than the 4096 bytes"):
        _read(source, 0, 4096)


def test_a_short_answer_is_the_source_gone(server: tuple[str, str]) -> None:
    url, ca = server
    source = _source(url, ca)
    _Handler.mode = "short"
    with pytest.raises(errors.SourceGoneError, match="gave 2048 bytes at 0, 4096"):
        _read(source, 0, 4096)


def test_an_ended_session_is_transient_and_its_cookie_is_in_no_message(
    server: tuple[str, str],
) -> None:
    url, ca = server
    with pytest.raises(errors.SourceIOError, match="401") as refused:
        _source(url, ca, cookie="vmware_soap_session=stale")
    assert "stale" not in str(refused.value)
    assert "stale" not in repr(ImageRef(http_range=HttpRange(url=url, size=1, cookie="stale")))
