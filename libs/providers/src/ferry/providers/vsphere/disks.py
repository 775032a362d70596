"""A vSphere disk read over the datastore HTTP path (``/folder``), by byte range.

For a cold copy the VM is off and its flat extent (``<disk>-flat.vmdk``) holds the
guest's bytes verbatim, so ranged GETs on ``/folder/<path>?dcPath=…&dsName=…`` read
it without VDDK or an export. Two faces, as the seam asks:

- :meth:`DatastoreDiskReader.read` issues the GETs itself (aiohttp, the session's
  cookie, the provider's trust), for Python copies;
- :meth:`DatastoreDiskReader.nbd_uri` / :meth:`qemu_source` serve the same file, from
  the moment the reader is entered, as a raw NBD export through ``nbdkit curl``,
  which is what the platform's copy engine opens: that engine is the one that copies
  in parallel, skips zeroes and resumes from its checkpoint, for every source alike.

The session cookie is a credential: nbdkit reads it from a 0600 file in a private
directory (``cookie=+FILE``), never from its argv or environment. From the login to
:meth:`DatastoreDiskReader.close` the reader holds its session
(:mod:`ferry.providers.vsphere.keepalive`), so a copy longer than vCenter's idle
timeout keeps the cookie it started with. A pinned server
is trusted by its certificate (checked against the thumbprint at login) given to
curl as the only CA, and to aiohttp as a SHA-256 fingerprint.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import quote

import aiohttp

from ferry.proto.inventory import Extent
from ferry.providers import children, lifetime
from ferry.providers.base import (
    HttpRange,
    ProviderError,
    QemuSource,
    SourceInterrupted,
    read_span,
)
from ferry.providers.nbd import NbdError
from ferry.providers.vsphere.client import Session
from ferry.providers.vsphere.keepalive import Hold
from ferry.providers.vsphere.keepalive import SessionExpired as SessionExpired  # its old home

log = logging.getLogger(__name__)
START_TIMEOUT = 20.0
BACKING = re.compile(r"^\[(?P<datastore>[^\]]+)\]\s*(?P<path>.+)$")


class DatastoreFileMissing(ProviderError):
    """The datastore HTTP path answered 404: the disk file is not where vSphere says."""


@dataclass(frozen=True)
class DatastoreFile:
    datacenter: str
    datastore: str
    path: str  # inside the datastore, forward slashes

    @classmethod
    def of_backing(cls, datacenter: str, backing: str) -> DatastoreFile:
        """``[ds] vm/vm.vmdk`` names the descriptor; the guest's bytes are in ``-flat``."""
        match = BACKING.match(backing)
        if match is None:
            raise ProviderError(f"disk backing {backing!r} is not a datastore path")
        path = match["path"]
        if path.endswith(".vmdk") and not path.endswith("-flat.vmdk"):
            path = path[: -len(".vmdk")] + "-flat.vmdk"
        return cls(datacenter, match["datastore"], path)

    def url(self, netloc: str) -> str:
        query = f"dcPath={quote(self.datacenter, safe='')}&dsName={quote(self.datastore, safe='')}"
        return f"https://{netloc}/folder/{quote(self.path)}?{query}"


class DatastoreDiskReader:
    """A :class:`ferry.providers.base.DiskReader` over one flat extent on a datastore."""

    def __init__(
        self,
        session: Session,
        file: DatastoreFile,
        size: int,
        name: str,
        allocation: Callable[[], Awaitable[list[Extent]]] | None = None,
    ) -> None:
        self.session = session
        self.file = file
        self.name = name
        self._size = size
        self._allocation = allocation
        self._http: aiohttp.ClientSession | None = None
        self._dir: Path | None = None
        self._nbdkit: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._hold: Hold | None = None  # the session behind the cookie, kept alive

    @property
    def size(self) -> int:
        return self._size

    @property
    def url(self) -> str:
        return self.file.url(self.session.netloc)

    async def __aenter__(self) -> Self:
        await self.probe()
        # Served now, not on demand: the seam's qemu_source() is synchronous, and the
        # volume-service hands it to a workload right after opening the disk.
        try:
            await self.nbd_uri()
        except BaseException:
            await self.close()
            raise
        return self

    async def probe(self) -> None:
        """Open the HTTP session and check the file: there (not 404), readable, whole.

        The reader stays open for :meth:`read` afterwards; :meth:`close` ends it.
        """
        cookie = await self._login()
        self._http = aiohttp.ClientSession(
            headers={"Cookie": cookie},
            connector=aiohttp.TCPConnector(ssl=self._aiohttp_ssl(), limit=8),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120),
        )
        try:
            async with self._http.head(self.url) as response:
                self._check(response.status, 0)
                length = int(response.headers.get("Content-Length", "-1"))
        except aiohttp.ClientError as exc:
            await self.close()
            raise ProviderError(f"disk {self.name}: {self.url}: {exc}") from None
        except BaseException:
            await self.close()
            raise
        if 0 <= length < self._size:
            await self.close()
            raise ProviderError(
                f"disk {self.name}: {self.file.path} holds {length} bytes, the disk is {self._size}"
            )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """A copy through the reader that failed (nbdkit curl's reads refused, seen by the
        copy workload as I/O errors) is a :class:`SessionExpired` when the session ended
        meanwhile: then a retry, with a new login, can finish it."""
        try:
            failed = isinstance(exc, Exception) and not isinstance(exc, SourceInterrupted)
            if failed and await self.session_ended():
                raise SessionExpired(
                    f"disk {self.name}: the vSphere session ended during the copy "
                    f"(datastore HTTP path answered 401); retried with a new login"
                ) from exc
        finally:
            await self.close()

    async def session_ended(self) -> bool:
        """Whether the datastore path now refuses this reader's cookie (401)."""
        if self._http is None:
            return False
        try:
            async with self._http.head(self.url) as response:
                return response.status == 401
        except aiohttp.ClientError:
            return False

    async def _login(self) -> str:
        """The session's cookie, held (kept alive) until :meth:`close`; one per reader, so
        its HTTP reads and its nbdkit carry the same session."""
        if self._hold is None:
            cookie = await asyncio.to_thread(self.session.cookie)
            self._hold = self.session.keepalive.hold(cookie, f"the read of disk {self.name}")
            self._hold.start()
        return self._hold.cookie

    async def close(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.stop()
        process, self._nbdkit = self._nbdkit, None
        await children.stop(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _aiohttp_ssl(self) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
        return aiohttp_ssl(self.session)

    def _check(self, status: int, offset: int) -> None:
        if status == 404:
            raise DatastoreFileMissing(
                f"disk {self.name}: [{self.file.datastore}] {self.file.path} "
                f"not found on the datastore HTTP path (404)"
            )
        if status == 401:
            raise SessionExpired(
                f"disk {self.name}: the vSphere session ended at offset {offset} "
                f"(datastore HTTP path answered 401); the copy is retried with a new login"
            )
        if status == 403:
            raise ProviderError(f"disk {self.name}: datastore access refused ({status})")
        if status >= 400:
            raise ProviderError(f"disk {self.name}: HTTP {status} at offset {offset}")

    async def read(self, offset: int, length: int) -> bytes:
        length = read_span(offset, length, self._size)
        if length == 0:
            return b""
        if self._http is None:
            raise ProviderError(f"disk {self.name} is not open (use 'async with')")
        headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            async with self._http.get(self.url, headers=headers) as response:
                self._check(response.status, offset)
                data = await response.read()
                if response.status == 200:  # a server that ignores Range sends it all
                    data = data[offset : offset + length]
        except aiohttp.ClientError as exc:
            raise ProviderError(f"disk {self.name}: read at {offset}: {exc}") from None
        if len(data) != length:
            raise ProviderError(f"disk {self.name}: short read at {offset}: {len(data)}/{length}")
        return data

    async def extents(self) -> list[Extent]:
        """Allocated areas from CBT when the VM has it on; else the whole disk.

        The /folder path has no allocation map of its own; without CBT the copy
        engine still skips the zero blocks it reads.
        """
        if self._allocation is not None:
            try:
                return await self._allocation()
            except ProviderError as exc:
                log.info("disk %s: no allocation map from CBT, reading it all: %s", self.name, exc)
        return [Extent(0, self._size)] if self._size else []

    def qemu_source(self) -> QemuSource:
        if self._dir is None:
            raise ProviderError(f"disk {self.name} is not open (use 'async with')")
        return QemuSource(
            format="raw",
            options={
                "driver": "raw",
                "file": {"driver": "nbd", "server": {"type": "unix", "path": self._socket()}},
            },
            http_range=self.http_range(),
        )

    def http_range(self) -> HttpRange:
        """The same file for a copy off this host (a pod): ranged GETs with this reader's
        cookie (the held session), trusted as nbdkit trusts it."""
        if self._hold is None:
            raise ProviderError(f"disk {self.name} is not open (use 'async with')")
        ca, insecure = pem_trust(self.session)
        return HttpRange(
            url=self.url, size=self._size, cookie=self._hold.cookie, ca=ca, insecure=insecure
        )

    async def nbd_uri(self) -> str:
        async with self._lock:
            if self._nbdkit is None:
                await self._serve()
        return f"nbd+unix:///?socket={self._socket()}"

    def _socket(self) -> str:
        assert self._dir is not None
        return str(self._dir / "nbd.sock")

    async def _serve(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="ferry-vsphere-"))
        cookie = write_secret(self._dir / "cookie", await self._login())
        args = [
            "nbdkit",
            "--exit-with-parent",
            "--readonly",
            "--foreground",
            f"--unix={self._socket()}",
            "curl",
            f"url={self.url}",
            f"cookie=+{cookie}",
            *self._curl_trust(),
        ]
        self._nbdkit = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=lifetime.die_with_parent(),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not os.path.exists(self._socket()):  # noqa: ASYNC240 (a stat per 20 ms)
            if self._nbdkit.returncode is not None or loop.time() > deadline:
                err = b""
                if self._nbdkit.stderr is not None and self._nbdkit.returncode is not None:
                    err = await self._nbdkit.stderr.read()
                await self.close()
                raise NbdError(f"nbdkit curl did not start: {err.decode(errors='replace')[-300:]}")
            await asyncio.sleep(0.02)

    def _curl_trust(self) -> list[str]:
        assert self._dir is not None
        return curl_trust(self.session, self._dir)


def aiohttp_ssl(session: Session) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
    """The provider's trust as aiohttp takes it."""
    trust = session.trust
    if trust.insecure:
        return False
    if trust.thumbprint:
        # The certificate was checked against the pin at login; pin its SHA-256 here.
        return aiohttp.Fingerprint(hashlib.sha256(session.certificate).digest())
    return trust.context()


def pem_trust(session: Session) -> tuple[str, bool]:
    """(PEM to trust, insecure): the Provider's trust as text a pod can carry; a pinned
    server's own certificate (checked against the thumbprint at login) is the only CA."""
    trust = session.trust
    if trust.insecure:
        return "", True
    if trust.thumbprint:
        return ssl.DER_cert_to_PEM_cert(session.certificate), False
    if trust.ca_pem:
        return trust.ca_pem, False
    return (Path(trust.ca_file).read_text() if trust.ca_file else ""), False


def curl_trust(session: Session, folder: Path) -> list[str]:
    """nbdkit curl's trust parameters for the session's server; PEM files go in ``folder``.

    A pinned server is trusted by its certificate (checked against the thumbprint at
    login) as the only CA.
    """
    trust = session.trust
    if trust.insecure:
        return ["sslverify=false"]
    if trust.ca_file and not (trust.thumbprint or trust.ca_pem):
        return [f"cainfo={trust.ca_file}"]
    pem, _ = pem_trust(session)
    if not pem:
        return []
    bundle = folder / ("vsphere-pinned.pem" if trust.thumbprint else "vsphere-ca.pem")
    bundle.write_text(pem)
    return [f"cainfo={bundle}"]


def write_secret(path: Path, text: str) -> Path:
    """``text`` into a new 0600 file (a cookie is a credential)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path
