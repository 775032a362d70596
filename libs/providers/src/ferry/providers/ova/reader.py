"""Reading one OVA disk: guest bytes, allocated extents, and qemu handles.

Raw disks (and flat VMDK extents) are guest bytes verbatim at an offset in the
archive, so they are read with ``pread`` and never unpacked. Every other format is
decoded by ``qemu-nbd`` started on demand, with the format named. Extents come from
``qemu-img map`` on the same description, so the data path never reads a hole.
Both qemu tools get the package's files as descriptors checked when the reader
opened them, and run bounded (:mod:`qemutools`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType
from typing import Self

from ferry.proto.inventory import Extent
from ferry.providers.base import FilePin, ProviderError, QemuSource, read_span
from ferry.providers.nbd import AsyncNbdClient, NbdError, NbdServer
from ferry.providers.ova import package, qemutools
from ferry.providers.ova.image import Image
from ferry.providers.ova.limits import DEFAULT, Limits

Resolved = tuple[Image, Callable[[], Awaitable[None]] | None]


class OvaDiskReader:
    """A :class:`ferry.providers.base.DiskReader` over one checked OVA image."""

    def __init__(
        self, name: str, resolve: Callable[[], Awaitable[Resolved]], limits: Limits = DEFAULT
    ) -> None:
        self.name = name
        self.limits = limits
        self._resolve = resolve
        self._pins = contextlib.ExitStack()
        self._pinned: qemutools.Pinned | None = None
        self._image: Image | None = None
        self._fd: int | None = None
        self._server: NbdServer | None = None
        self._client: AsyncNbdClient | None = None
        self._start_lock = asyncio.Lock()

    @property
    def size(self) -> int:
        return self.image.virtual_size

    @property
    def image(self) -> Image:
        if self._image is None:
            raise ProviderError(f"disk {self.name} is not open (use 'async with')")
        return self._image

    async def __aenter__(self) -> Self:
        checked, verify = await self._resolve()
        if verify is not None:
            await verify()
        self._image = checked
        window = self.image.window
        if window is not None:
            self._fd = package.open_checked(window)
        elif checked.files:
            # Opened and checked once, now: every qemu tool reads these descriptors.
            self._pinned = self._pins.enter_context(qemutools.pinned(checked.source, checked.files))
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
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._pinned = None
        self._pins.close()

    async def read(self, offset: int, length: int) -> bytes:
        length = read_span(offset, length, self.size)
        if length == 0:
            return b""
        window = self.image.window
        if window is not None:
            return await asyncio.to_thread(self._pread, window.offset + offset, length, offset)
        client = await self._nbd_client()
        try:
            return await client.read(offset, length)
        except NbdError as exc:
            # Keep the errno (the copy engine classifies by it) but say, in the
            # user's words, which disk, where, and what is wrong with the file.
            raise NbdError(exc.errno or errno.EIO, self._unreadable(offset, length)) from exc

    def _unreadable(self, offset: int, length: int) -> str:
        image = self.image
        return (
            f"disk {self.name}: the {image.format.value} image cannot be read at guest offset "
            f"{offset} ({length} bytes); the file is damaged or cut short"
        )

    def _pread(self, offset: int, length: int, guest: int) -> bytes:
        if self._fd is None:
            raise ProviderError(f"disk {self.name} is not open (use 'async with')")
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise NbdError(
                errno.EIO,
                f"disk {self.name}: the file ends at byte {os.fstat(self._fd).st_size}, short "
                f"of the {length} bytes at guest offset {guest} (file offset {offset}); "
                "the package was cut short",
            )
        return data

    async def extents(self) -> list[Extent]:
        where = f"disk {self.name}"
        pins = self._pinned
        args = pins.args() if pins is not None else self.image.source.qemu_img_args()
        rows = await qemutools.qemu_img_json(
            where, ["map", "--output=json", *args], pins, self.limits
        )
        return merged(
            Extent(int(row["start"]), int(row["length"]))
            for row in rows
            if row.get("data") and int(row["start"]) < self.size
        )

    def qemu_source(self) -> QemuSource:
        """The image's qemu description, with the files it reads pinned as checked.

        A copy that runs elsewhere (the platform's workload) opens these files by
        name again; the pins make it refuse whatever was swapped in meanwhile.
        """
        image = self.image
        pins = []
        for location in image.files:
            if location.identity is None:
                raise ProviderError(f"disk {self.name}: {location.name} was never checked")
            device, inode = location.identity
            name = qemutools.link_name(location)
            pins.append(FilePin(path=str(location.path), name=name, device=device, inode=inode))
        return QemuSource(
            format=image.source.format, options=image.source.options, pins=tuple(pins)
        )

    async def nbd_uri(self) -> str:
        return (await self._nbd_server()).uri()

    async def _nbd_server(self) -> NbdServer:
        async with self._start_lock:
            if self._server is None:
                pins = self._pinned
                server = NbdServer(
                    pins.source if pins is not None else self.image.source,
                    pass_fds=pins.fds if pins is not None else (),
                    preexec_fn=qemutools.bounded(self.limits, cpu=False),
                )
                await server.start()
                self._server = server
            return self._server

    async def _nbd_client(self) -> AsyncNbdClient:
        server = await self._nbd_server()
        async with self._start_lock:
            if self._client is None:
                self._client = await AsyncNbdClient.connect(server.socket)
            return self._client


def merged(extents: Iterable[Extent]) -> list[Extent]:
    """Adjacent ranges joined, so callers issue fewer, larger reads."""
    result: list[Extent] = []
    for extent in extents:
        if result and result[-1].offset + result[-1].length == extent.offset:
            last = result.pop()
            extent = Extent(last.offset, last.length + extent.length)
        result.append(extent)
    return result
