"""Serve a qemu block description over NBD and read it: guest bytes of any format.

``qemu-nbd`` decodes streamOptimized VMDK, sparse VMDK and qcow2 for us; this
module starts it on a private Unix socket (read-only, format named explicitly)
and speaks just enough of the NBD protocol (fixed newstyle handshake, simple
replies, READ) to serve ranged reads. Tools such as ``nbdcopy`` can use the same
socket through :meth:`NbdServer.uri`.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import struct
import tempfile
from pathlib import Path

from ferry.providers.base import ProviderError, QemuSource

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = b"IHAVEOPT"
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_EXPORT_NAME = 1
_REQUEST_MAGIC = 0x25609513
_REPLY_MAGIC = 0x67446698
_CMD_READ = 0
_CMD_DISC = 2
MAX_READ = 32 * 1024 * 1024  # qemu-nbd refuses requests above 32 MiB
START_TIMEOUT = 30.0


class NbdError(ProviderError):
    """The NBD server could not be started or answered with an error."""


class NbdServer:
    """A read-only ``qemu-nbd`` on a private Unix socket, stopped on exit."""

    def __init__(self, source: QemuSource) -> None:
        self.source = source
        self._dir: Path | None = None
        self._process: asyncio.subprocess.Process | None = None

    @property
    def socket(self) -> Path:
        if self._dir is None:
            raise NbdError("NBD server is not running")
        return self._dir / "nbd.sock"

    def uri(self) -> str:
        return f"nbd+unix:///?socket={self.socket}"

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="ferry-nbd-"))
        self._process = await asyncio.create_subprocess_exec(
            "qemu-nbd",
            "--read-only",
            "--persistent",
            "--shared=0",
            f"--socket={self.socket}",
            *self.source.qemu_img_args(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        assert self._process is not None
        while not self.socket.exists():
            if self._process.returncode is not None or loop.time() > deadline:
                err = b""
                if self._process.stderr is not None and self._process.returncode is not None:
                    err = await self._process.stderr.read()
                await self.stop()
                raise NbdError(f"qemu-nbd did not start: {err.decode(errors='replace')[-300:]}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


class NbdClient:
    """One NBD connection; requests are serialised with a lock."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size: int):
        self._reader, self._writer, self.size = reader, writer, size
        self._lock = asyncio.Lock()
        self._handle = 0

    @classmethod
    async def connect(cls, socket: Path) -> NbdClient:
        reader, writer = await asyncio.open_unix_connection(str(socket))
        try:
            size = await _handshake(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            writer.close()
            raise NbdError(f"NBD handshake failed: {exc}") from None
        return cls(reader, writer, size)

    async def read(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            step = min(length, MAX_READ)
            parts.append(await self._read_once(offset, step))
            offset, length = offset + step, length - step
        return b"".join(parts)

    async def _read_once(self, offset: int, length: int) -> bytes:
        async with self._lock:
            self._handle += 1
            request = struct.pack(
                ">IHHQQI", _REQUEST_MAGIC, 0, _CMD_READ, self._handle, offset, length
            )
            self._writer.write(request)
            await self._writer.drain()
            magic, error, handle = struct.unpack(">IIQ", await self._reader.readexactly(16))
            if magic != _REPLY_MAGIC or handle != self._handle:
                raise NbdError("NBD reply out of order")
            if error:
                raise NbdError(f"NBD read at {offset} failed with errno {error}")
            return await self._reader.readexactly(length)

    async def close(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            self._writer.write(struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, _CMD_DISC, 0, 0, 0))
            await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Fixed newstyle handshake with NBD_OPT_EXPORT_NAME on the default export."""
    greeting = await reader.readexactly(18)
    if greeting[:8] != _NBDMAGIC or greeting[8:16] != _IHAVEOPT:
        raise NbdError("not an NBD newstyle server")
    (server_flags,) = struct.unpack(">H", greeting[16:])
    no_zeroes = bool(server_flags & _FLAG_NO_ZEROES)
    flags = _FLAG_FIXED_NEWSTYLE | (_FLAG_NO_ZEROES if no_zeroes else 0)
    writer.write(struct.pack(">I", flags) + _IHAVEOPT + struct.pack(">II", _OPT_EXPORT_NAME, 0))
    await writer.drain()
    size, _ = struct.unpack(">QH", await reader.readexactly(10))
    if not no_zeroes:
        await reader.readexactly(124)
    return int(size)
