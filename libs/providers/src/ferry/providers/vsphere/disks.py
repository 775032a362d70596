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
directory (``cookie=+FILE``), never from its argv or environment. A pinned server
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
from ferry.providers import children
from ferry.providers.base import ProviderError, QemuSource
from ferry.providers.nbd import NbdError
from ferry.providers.vsphere.client import Session

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

    @property
    def size(self) -> int:
        return self._size

    @property
    def url(self) -> str:
        return self.file.url(self.session.netloc)

    async def __aenter__(self) -> Self:
        cookie = await asyncio.to_thread(self.session.cookie)
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
        # Served now, not on demand: the seam's qemu_source() is synchronous, and the
        # volume-service hands it to a workload right after opening the disk.
        try:
            await self.nbd_uri()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        process, self._nbdkit = self._nbdkit, None
        await children.stop(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _aiohttp_ssl(self) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
        trust = self.session.trust
        if trust.insecure:
            return False
        if trust.thumbprint:
            # The certificate was checked against the pin at login; pin its SHA-256 here.
            return aiohttp.Fingerprint(hashlib.sha256(self.session.certificate).digest())
        return trust.context()

    def _check(self, status: int, offset: int) -> None:
        if status == 404:
            raise DatastoreFileMissing(
                f"disk {self.name}: [{self.file.datastore}] {self.file.path} "
                f"not found on the datastore HTTP path (404)"
            )
        if status in (401, 403):
            raise ProviderError(f"disk {self.name}: datastore access refused ({status})")
        if status >= 400:
            raise ProviderError(f"disk {self.name}: HTTP {status} at offset {offset}")

    async def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        length = max(0, min(length, self._size - offset))
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
        cookie = self._dir / "cookie"
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(await asyncio.to_thread(self.session.cookie))
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
        trust = self.session.trust
        if trust.insecure:
            return ["sslverify=false"]
        assert self._dir is not None
        if trust.thumbprint:
            pinned = self._dir / "pinned.pem"
            pinned.write_text(ssl.DER_cert_to_PEM_cert(self.session.certificate))
            return [f"cainfo={pinned}"]
        if trust.ca_pem:
            bundle = self._dir / "ca.pem"
            bundle.write_text(trust.ca_pem)
            return [f"cainfo={bundle}"]
        return [f"cainfo={trust.ca_file}"] if trust.ca_file else []
