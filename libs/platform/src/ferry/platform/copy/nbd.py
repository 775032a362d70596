"""A ``qemu-nbd`` server for images Python cannot read itself, read with Ferry's NBD client.

qcow2 and VMDK (flat or streamOptimized) are decoded by qemu, exported over a
private Unix socket, and read with plain NBD requests: one connection per copy
thread. The same server, writable, is how a qcow2 target is written. The client
is the providers' (:mod:`ferry.providers.nbd`, where the choice of a hand-written
client over libnbd's binding is measured and explained); it is named here too so
that the copy engine's modules say ``nbd.NbdClient``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from ferry.platform import errors
from ferry.providers import lifetime
from ferry.providers.nbd import NbdClient, NbdError

__all__ = ["NbdClient", "NbdError", "QemuNbd", "exported"]

LOCK_WAIT_SECONDS = 10.0


class QemuNbd:
    """A private ``qemu-nbd`` exporting one image with its format named explicitly."""

    def __init__(
        self,
        path: str,
        fmt: str,
        *,
        writable: bool = False,
        connections: int = 8,
        pass_fds: tuple[int, ...] = (),
        objects: tuple[str, ...] = (),
    ):
        if shutil.which("qemu-nbd") is None:
            raise errors.InvalidSourceError("qemu-nbd is not installed")
        self.path = path
        self.format = fmt
        self._pass_fds = pass_fds  # pinned source files the image reads as /dev/fd/N
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
        args += [a for obj in objects for a in ("--object", obj)]  # (TLS credentials, by folder)
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

    def _spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            args,
            pass_fds=self._pass_fds,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # a qemu-nbd must not outlive the copy that started it (kill -9)
            preexec_fn=lifetime.die_with_parent(signal.SIGKILL),
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
