"""One disk read through the VM's NFC export lease: a :class:`~ferry.providers.base.DiskReader`.

Entering the reader downloads and checks the disk (:mod:`~ferry.providers.vsphere.nfc`);
from then on it is a local streamOptimized VMDK of Ferry's own: the copy opens it by
name (pinned, so a file swapped in meanwhile is refused), and :meth:`read`,
:meth:`extents` and :meth:`nbd_uri` go through ``qemu-nbd`` and ``qemu-img map`` with
the format named. Leaving the reader removes the download.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ferry.proto.inventory import Disk, Extent, Vm
from ferry.providers.base import FilePin, Pace, ProviderError, QemuSource, read_span
from ferry.providers.nbd import AsyncNbdClient, NbdServer
from ferry.providers.vsphere import nfc
from ferry.providers.vsphere.client import Session
from ferry.providers.vsphere.disks import aiohttp_ssl
from ferry.providers.vsphere.keepalive import Hold


class NfcDiskReader:
    """A disk of a powered-off VM, read once through the VM's export lease."""

    def __init__(
        self,
        session: Session,
        leases: nfc.Leases,
        vm: Vm,
        disk: Disk,
        ref_of: Callable[[Any], Any],
    ) -> None:
        self.session = session
        self.leases = leases
        self.vm = vm
        self.disk = disk
        self.name = f"{vm.id}:{disk.id}"
        self._ref_of = ref_of
        self._folder: Path | None = None
        self._path: Path | None = None
        self._pin: FilePin | None = None
        self._hold: Hold | None = None
        self._server: NbdServer | None = None
        self._client: AsyncNbdClient | None = None
        self._lock = asyncio.Lock()
        # The copy's bandwidth budgets, set before entering: the download moves the
        # source's bytes (ferry.providers.base.PacedReader).
        self.pace: Pace | None = None

    @property
    def size(self) -> int:
        return self.disk.capacity

    async def __aenter__(self) -> Self:
        try:
            cookie = await asyncio.to_thread(self.session.cookie)
            self._hold = self.session.keepalive.hold(cookie, f"the export of disk {self.name}")
            self._hold.start()
            self._folder = nfc.private_folder()
            ssl = aiohttp_ssl(self.session)
            async with self.leases.of(self.vm, self._ref_of) as lease:
                path = await nfc.download(
                    lease, self.disk.id, self._folder, ssl, cookie, self.name, self.pace
                )
            await nfc.check_stream(path, self.disk.capacity, self.name)
            seen = os.stat(path, follow_symlinks=False)
            self._path = path
            self._pin = FilePin(
                path=str(path), name=path.name, device=seen.st_dev, inode=seen.st_ino
            )
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
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.stop()
        nfc.remove(self._folder)
        self._folder = self._path = None
        self._pin = None

    def _source(self, pinned: bool) -> QemuSource:
        if self._path is None or self._pin is None:
            raise ProviderError(f"disk {self.name} is not open (use 'async with')")
        options = {"driver": "vmdk", "file": {"driver": "file", "filename": str(self._path)}}
        return QemuSource(format="vmdk", options=options, pins=(self._pin,) if pinned else ())

    def qemu_source(self) -> QemuSource:
        return self._source(pinned=True)

    async def nbd_uri(self) -> str:
        return (await self._nbd_server()).uri()

    async def _nbd_server(self) -> NbdServer:
        async with self._lock:
            if self._server is None:
                server = NbdServer(self._source(pinned=False))
                await server.start()
                self._server = server
            return self._server

    async def read(self, offset: int, length: int) -> bytes:
        length = read_span(offset, length, self.size)
        if length == 0:
            return b""
        server = await self._nbd_server()
        async with self._lock:
            if self._client is None:
                self._client = await AsyncNbdClient.connect(server.socket)
            client = self._client
        return await client.read(offset, length)

    async def extents(self) -> list[Extent]:
        source = self._source(pinned=False)
        rows = await nfc.qemu_img_json(
            ["map", "--output=json", *source.qemu_img_args()],
            f"disk {self.name}: qemu-img map failed: ",
        )
        found: list[Extent] = []
        for row in rows:
            if not row.get("data"):
                continue
            start, length = int(row["start"]), int(row["length"])
            if found and found[-1].offset + found[-1].length == start:
                last = found.pop()
                start, length = last.offset, last.length + length
            found.append(Extent(start, length))
        return found
