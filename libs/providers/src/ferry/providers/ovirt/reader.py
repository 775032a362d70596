"""One oVirt disk as a :class:`ferry.providers.base.DiskReader`: an image transfer.

Entering adds a raw download transfer (after cancelling any a killed run left on the
VM), and serves its imageio URL as a read-only NBD export on a private Unix socket
through ``nbdkit`` and Ferry's Python plugin (:mod:`.nbdkit_imageio`), so the data
path (a populator, ``qemu-img``) reads it like any NBD source, imageio's zero extents
included. The URL (its ticket is a secret) and the CA travel in a 0600 file, never on a
command line. Leaving stops nbdkit and finalizes the transfer after a clean exit, or
cancels it on an error or a cancellation; either way the ticket is gone.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from ferry.proto.inventory import Extent, Vm
from ferry.providers import children, lifetime
from ferry.providers.base import DiskNotFound, ProviderError, QemuSource, read_span
from ferry.providers.libvirt.exports import merged, qemu_img_map
from ferry.providers.nbd import AsyncNbdClient
from ferry.providers.ovirt import imageio_extents, transfers
from ferry.providers.ovirt.client import Client

PLUGIN = Path(__file__).with_name("nbdkit_imageio.py")
START_SECONDS = 30.0


class OvirtDiskReader:
    def __init__(self, client: Client, vm: Vm, disk_id: str, backup: str | None = None) -> None:
        disk = next((d for d in vm.disks if d.id == disk_id), None)
        if disk is None:
            raise DiskNotFound(vm.name, disk_id)
        self._client = client
        self._vm = vm
        self._disk_id = disk_id
        self._backup = backup
        self._size = disk.capacity
        self._transfer: str | None = None
        self._dir: Path | None = None
        self._nbdkit: asyncio.subprocess.Process | None = None
        self._nbd: AsyncNbdClient | None = None
        self._url = ""  # the transfer's URL (its ticket is a secret) while open
        self._ca = ""

    @property
    def size(self) -> int:
        return self._size

    @property
    def transfer_id(self) -> str | None:
        return self._transfer

    @property
    def socket(self) -> Path:
        if self._dir is None:
            raise ProviderError(f"disk {self._disk_id} is not open (use 'async with')")
        return self._dir / "nbd.sock"

    async def __aenter__(self) -> Self:
        c = self._client
        if self._backup is None:  # a backup's view ends what a killed run left, once
            await c.call(lambda: transfers.cancel_leftovers(c.system(), self._vm.id, self._disk_id))
        self._transfer, url = await c.call(
            lambda: transfers.start(c.system(), self._vm.id, self._disk_id, backup=self._backup)
        )
        try:
            await self._serve(url)
        except BaseException:
            await asyncio.shield(self.close(ok=False))
            raise
        return self

    async def _serve(self, url: str) -> None:
        self._url = url
        ca = self._client.ca_file
        self._ca = await asyncio.to_thread(Path(ca).read_text) if ca else ""
        self._dir = Path(tempfile.mkdtemp(prefix="ferry-ovirt-nbd-"))
        conf = self._dir / "transfer.json"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "ca": self._client.ca_file or ""}, f)
        log = os.open(self._dir / "nbdkit.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self._nbdkit = await self._start_nbdkit(conf, log)
        finally:
            os.close(log)
        await self._wait_ready()

    async def _start_nbdkit(self, conf: Path, log: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            "nbdkit", "--foreground", "--readonly", "--exit-with-parent",
            f"--unix={self.socket}", "python", str(PLUGIN), f"config={conf}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=log, preexec_fn=lifetime.die_with_parent(),
        )  # fmt: skip

    async def _wait_ready(self) -> None:
        assert self._nbdkit is not None and self._dir is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_SECONDS
        while not self.socket.exists():
            if self._nbdkit.returncode is not None or loop.time() > deadline:
                why = (self._dir / "nbdkit.log").read_text(errors="replace")[-300:]
                raise ProviderError(f"nbdkit did not serve the image transfer: {why}")
            await asyncio.sleep(0.02)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close(ok=exc_type is None))

    async def close(self, *, ok: bool) -> None:
        if self._nbd is not None:
            await self._nbd.close()
            self._nbd = None
        process, self._nbdkit = self._nbdkit, None
        await children.stop(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        self._url = self._ca = ""
        transfer, self._transfer = self._transfer, None
        if transfer is not None:
            c = self._client
            await c.call(lambda: transfers.close(c.system(), transfer, ok=ok))

    async def imageio_extents(self, context: str) -> list[Extent]:
        """imageio's own extents of the transfer (``zero``: ranges holding data; ``dirty``:
        ranges a backup's bitmap marks changed, zero or not)."""
        if not self._url:
            raise ProviderError(f"disk {self._disk_id} is not open (use 'async with')")
        url, ca = self._url, self._client.ca_file
        return await asyncio.to_thread(imageio_extents.fetch, url, ca, context)

    async def read(self, offset: int, length: int) -> bytes:
        length = read_span(offset, length, self.size)
        if length == 0:
            return b""
        if self._nbd is None:
            self._nbd = await AsyncNbdClient.connect(self.socket)
        return await self._nbd.read(offset, length)

    async def extents(self) -> list[Extent]:
        rows = await qemu_img_map(self.qemu_source().filename())
        return merged(
            Extent(int(str(r["start"])), int(str(r["length"])))
            for r in rows
            if r.get("data") and not r.get("zero")
        )

    def qemu_source(self) -> QemuSource:
        nbd = {"driver": "nbd", "server": {"type": "unix", "path": str(self.socket)}}
        return QemuSource(
            format="raw", options={"driver": "raw", "file": nbd}, url=self._url, ca=self._ca
        )

    async def nbd_uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"
