"""One disk of a libvirt domain as a :class:`ferry.providers.base.DiskReader`.

A running domain's disk is read through a pull-mode backup job (a point-in-time
view, so a copy is consistent even while the guest writes); a shut-off domain's
disk on this host is read from its file, decoded by ``qemu-nbd`` with the format
named. The domain's one backup job is shared by the readers of its disks that are
open at the same time (:class:`SharedViews`), and ended when the last one closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self

from ferry.proto.inventory import Extent, Vm
from ferry.providers.base import DiskNotFound, NbdTls, ProviderError, QemuSource, read_span
from ferry.providers.libvirt.backup import settle
from ferry.providers.libvirt.exports import merged, qemu_img_map
from ferry.providers.nbd import AsyncNbdClient, NbdServer

_QEMU_FORMATS = {"raw": "raw", "qcow2": "qcow2"}


class View(Protocol):
    """What a reader reads through: a :class:`Backup`, or a :class:`PausedView` of it."""

    async def __aenter__(self) -> Any: ...

    async def close(self) -> None: ...

    async def changed_extents(self, disk_id: str) -> list[Extent]: ...

    async def read(self, disk_id: str, offset: int, length: int) -> bytes: ...

    def nbd_export(self, disk_id: str) -> tuple[str, str]: ...

    def tls_export(self, disk_id: str) -> NbdTls | None: ...


@dataclass
class _Held:
    view: View
    users: int


class SharedViews:
    """One full backup view per domain, shared by its open readers (``make`` opens a
    running domain's job, or a shut-off one's started paused)."""

    def __init__(self, make: Callable[[Vm], Awaitable[View]]) -> None:
        self._make = make
        self._held: dict[str, _Held] = {}
        self._lock = asyncio.Lock()

    async def acquire(self, vm: Vm) -> View:
        async with self._lock:
            held = self._held.get(vm.id)
            if held is None:
                view = await self._make(vm)
                await view.__aenter__()
                held = self._held[vm.id] = _Held(view, 0)
            held.users += 1
            return held.view

    async def release(self, vm: Vm) -> None:
        async with self._lock:
            held = self._held.get(vm.id)
            if held is None:
                return
            held.users -= 1
            if held.users <= 0:
                del self._held[vm.id]
                await held.view.close()


@dataclass(frozen=True)
class FileDisk:
    """A shut-off domain's disk on this host: its path, format and whether it is a device."""

    path: str
    format: str
    block: bool

    def qemu_source(self) -> QemuSource:
        proto = "host_device" if self.block else "file"
        return QemuSource(
            format=_QEMU_FORMATS[self.format],
            options={"driver": self.format, "file": {"driver": proto, "filename": self.path}},
        )


class LibvirtDiskReader:
    """A running domain's disk through the shared backup view, or a shut-off one's file
    (``paused_reads``: through a view of the domain started paused, the files being on a
    host Ferry reads over TLS)."""

    def __init__(
        self,
        vm: Vm,
        disk_id: str,
        running: Callable[[], Awaitable[bool]],
        views: SharedViews,
        file_disk: Callable[[], Awaitable[FileDisk]],
        *,
        paused_reads: bool = False,
    ) -> None:
        if disk_id not in {d.id for d in vm.disks}:
            raise DiskNotFound(vm.name, disk_id)
        self._vm = vm
        self._disk_id = disk_id
        self._running = running
        self._views = views
        self._file_disk = file_disk
        self._paused_reads = paused_reads
        self._view: View | None = None
        self._file: FileDisk | None = None
        self._server: NbdServer | None = None
        self._client: AsyncNbdClient | None = None
        self._size = next(d.capacity for d in vm.disks if d.id == disk_id)

    @property
    def size(self) -> int:
        return self._size

    async def __aenter__(self) -> Self:
        if self._paused_reads or await self._running():
            self._view = await self._views.acquire(self._vm)
        else:
            self._file = await self._file_disk()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await settle(self.close())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._view is not None:
            self._view = None
            await self._views.release(self._vm)

    async def read(self, offset: int, length: int) -> bytes:
        if self._view is not None:
            read_span(offset, length, self.size)  # the view clamps itself; refuse negatives
            return await self._view.read(self._disk_id, offset, length)
        length = read_span(offset, length, self.size)
        if length == 0:
            return b""
        if self._client is None:
            server = await self._nbd_server()
            self._client = await AsyncNbdClient.connect(server.socket)
        return await self._client.read(offset, length)

    async def extents(self) -> list[Extent]:
        if self._view is not None:
            return await self._view.changed_extents(self._disk_id)
        rows = await qemu_img_map(self.qemu_source().filename())
        return merged(
            Extent(int(str(r["start"])), int(str(r["length"])))
            for r in rows
            if r.get("data") and not r.get("zero")
        )

    def qemu_source(self) -> QemuSource:
        if self._view is not None:
            socket, export = self._view.nbd_export(self._disk_id)
            nbd = {"driver": "nbd", "server": {"type": "unix", "path": socket}, "export": export}
            # (over TLS, the host's export too: a populator pod reads it itself)
            tls = self._view.tls_export(self._disk_id)
            return QemuSource(format="raw", options={"driver": "raw", "file": nbd}, nbd_tls=tls)
        if self._file is None:
            raise ProviderError(f"disk {self._disk_id} is not open (use 'async with')")
        return self._file.qemu_source()

    async def nbd_uri(self) -> str:
        if self._view is not None:
            socket, export = self._view.nbd_export(self._disk_id)
            return f"nbd+unix:///{export}?socket={socket}"
        return (await self._nbd_server()).uri()

    async def _nbd_server(self) -> NbdServer:
        if self._server is None:
            server = NbdServer(self.qemu_source())
            await server.start()
            self._server = server
        return self._server
