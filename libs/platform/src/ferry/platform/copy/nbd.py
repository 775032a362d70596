"""A small NBD client and a ``qemu-nbd`` server, for images Python cannot read itself.

qcow2 and VMDK (flat or streamOptimized) are decoded by qemu, exported over a
private Unix socket, and read here with plain NBD requests: one connection per
copy thread, no structured replies, the oldest and simplest part of the protocol.
The same server, writable, is how a qcow2 target is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ferry.platform.copy import errors

_NBDMAGIC = b"NBDMAGIC"
_IHAVEOPT = b"IHAVEOPT"
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_EXPORT_NAME = 1
_REQUEST_MAGIC = 0x25609513
_REPLY_MAGIC = 0x67446698
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH, _CMD_TRIM = 0, 1, 2, 3, 4
_CMD_WRITE_ZEROES = 6
_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
MAX_REQUEST = 32 * 1024 * 1024
PIPELINE_REQUEST = 1024 * 1024
LOCK_WAIT_SECONDS = 10.0


_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: a qemu-nbd must not outlive the copy that started it (kill -9)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class NbdError(OSError):
    """The server answered a request with an errno."""


class NbdClient:
    """One NBD connection; not thread-safe (use one per thread)."""

    def __init__(self, socket_path: str, export: str = "") -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(socket_path)
        self._handle = 0
        self.size = self._handshake(export)

    def _recv_exact(self, length: int) -> bytes:
        buf = bytearray(length)
        self._recv_into(memoryview(buf))
        return bytes(buf)

    def _recv_into(self, view: memoryview) -> None:
        got = 0
        while got < len(view):
            n = self._sock.recv_into(view[got:])
            if n == 0:
                raise ConnectionResetError(104, "NBD server closed the connection")
            got += n

    def _handshake(self, export: str) -> int:
        hello = self._recv_exact(18)
        if hello[:8] != _NBDMAGIC or hello[8:16] != _IHAVEOPT:
            raise ConnectionError("not a newstyle NBD server")
        (server_flags,) = struct.unpack(">H", hello[16:18])
        no_zeroes = bool(server_flags & _FLAG_NO_ZEROES)
        client_flags = _FLAG_FIXED_NEWSTYLE | (_FLAG_NO_ZEROES if no_zeroes else 0)
        name = export.encode()
        self._sock.sendall(
            struct.pack(">I", client_flags)
            + _IHAVEOPT
            + struct.pack(">II", _OPT_EXPORT_NAME, len(name))
            + name
        )
        size, _flags = struct.unpack(">QH", self._recv_exact(10))
        if not no_zeroes:
            self._recv_exact(124)
        return int(size)

    def _request(self, command: int, offset: int, length: int, payload: memoryview | None) -> None:
        self._handle += 1
        header = _REQUEST.pack(_REQUEST_MAGIC, 0, command, self._handle, offset, length)
        if payload is None:
            self._sock.sendall(header)
        else:
            self._sock.sendall(header)
            self._sock.sendall(payload)

    def _reply(self) -> None:
        magic, error, handle = _REPLY.unpack(self._recv_exact(_REPLY.size))
        if magic != _REPLY_MAGIC or handle != self._handle:
            raise ConnectionError("NBD reply out of step")
        if error:
            raise NbdError(error, os.strerror(error))

    def readinto(self, offset: int, view: memoryview) -> None:
        """Read ``view``'s length at ``offset``, several requests in flight.

        Pipelining lets the server prepare the next piece while this one is
        received; replies may arrive in any order and are matched by handle.
        """
        pending: dict[int, memoryview] = {}
        headers = []
        for start in range(0, len(view), PIPELINE_REQUEST):
            part = view[start : start + PIPELINE_REQUEST]
            self._handle += 1
            pending[self._handle] = part
            headers.append(
                _REQUEST.pack(_REQUEST_MAGIC, 0, _CMD_READ, self._handle, offset + start, len(part))
            )
        self._sock.sendall(b"".join(headers))
        failure = 0
        while pending:
            magic, error, handle = _REPLY.unpack(self._recv_exact(_REPLY.size))
            if magic != _REPLY_MAGIC or handle not in pending:
                raise ConnectionError("NBD reply out of step")
            part = pending.pop(handle)
            if error:
                failure = failure or error  # no payload follows; keep draining the rest
                continue
            self._recv_into(part)
        if failure:
            raise NbdError(failure, os.strerror(failure))

    def write(self, offset: int, view: memoryview) -> None:
        for start in range(0, len(view), MAX_REQUEST):
            part = view[start : start + MAX_REQUEST]
            self._request(_CMD_WRITE, offset + start, len(part), part)
            self._reply()

    def zero(self, offset: int, length: int) -> None:
        """Zero a range, letting the server deallocate it (a hole, not written zeros)."""
        step = 1 << 30
        for start in range(0, length, step):
            self._request(_CMD_WRITE_ZEROES, offset + start, min(step, length - start), None)
            self._reply()

    def flush(self) -> None:
        self._request(_CMD_FLUSH, 0, 0, None)
        self._reply()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._request(_CMD_DISC, 0, 0, None)
        self._sock.close()


class QemuNbd:
    """A private ``qemu-nbd`` exporting one image with its format named explicitly."""

    def __init__(self, path: str, fmt: str, *, writable: bool = False, connections: int = 8):
        if shutil.which("qemu-nbd") is None:
            raise errors.InvalidSourceError("qemu-nbd is not installed")
        self.path = path
        self.format = fmt
        self._dir = tempfile.mkdtemp(prefix="ferry-nbd-")
        self.socket = str(Path(self._dir) / "nbd.sock")
        args = [
            "qemu-nbd",
            f"--format={fmt}",
            f"--socket={self.socket}",
            f"--shared={connections}",
            "--persistent",
            "--cache=writeback",
            "--aio=threads",
        ]
        if writable:
            args.append("--discard=unmap")
        else:
            args.append("--read-only")
        args.append(path)
        # A killed copy's qemu-nbd dies with it, but not instantly: while it
        # still holds the image lock, a new server fails to open it, so retry.
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            self._proc = self._spawn(args)
            try:
                self._wait_ready()
                break
            except errors.InvalidSourceError as exc:
                if "lock" not in exc.reason or time.monotonic() > deadline:
                    raise
                self._dir = tempfile.mkdtemp(prefix="ferry-nbd-")
                self.socket = str(Path(self._dir) / "nbd.sock")
                args = [
                    a if not a.startswith("--socket=") else f"--socket={self.socket}" for a in args
                ]
                time.sleep(0.1)

    @staticmethod
    def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_die_with_parent,  # one async-signal-safe prctl, nothing else
        )

    def _wait_ready(self) -> None:
        # The socket file appears at bind(), a moment before listen(): only a
        # completed handshake proves the server is ready.
        deadline = time.monotonic() + 30
        while True:
            if os.path.exists(self.socket):
                try:
                    NbdClient(self.socket).close()
                    return
                except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError):
                    pass
            if self._proc.poll() is not None:
                pipe = self._proc.stderr
                stderr = pipe.read().decode(errors="replace") if pipe else ""
                self.close()
                raise errors.InvalidSourceError(
                    f"qemu-nbd could not open {self.format} image: {stderr.strip()[-300:]}"
                )
            if time.monotonic() > deadline:
                self.close()
                raise errors.InvalidSourceError("qemu-nbd did not start within 30 s")
            time.sleep(0.01)

    def connect(self) -> NbdClient:
        try:
            return NbdClient(self.socket)
        except OSError as exc:
            raise errors.SourceGoneError(f"the NBD export went away: {exc}") from exc

    def alive(self) -> bool:
        return self._proc.poll() is None

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._proc.stderr:
            self._proc.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextlib.contextmanager
def exported(path: str, fmt: str, *, writable: bool = False) -> Iterator[QemuNbd]:
    server = QemuNbd(path, fmt, writable=writable)
    try:
        yield server
    finally:
        server.close()
