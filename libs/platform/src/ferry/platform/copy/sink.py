"""Where the copy writes: a raw file (or block device) or a qcow2 image.

Holes are never written: a fresh target already reads as zeros, and a resumed
target has its unfinished tail punched (raw: ``fallocate(PUNCH_HOLE)``; qcow2:
NBD ``WRITE_ZEROES`` with unmap allowed) instead of being filled with zeros.
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Protocol

from ferry.platform.copy import errors, nbd
from ferry.platform.copy.source import DiskSource, QemuImageSource, RawFileSource

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Deallocate a range so it reads as zeros, keeping the file size."""
    if length <= 0:
        return
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class RangeWriter(Protocol):
    def write(self, offset: int, view: memoryview) -> None: ...

    def close(self) -> None: ...


class DiskSink(Protocol):
    """The target of one copy."""

    format: str

    def writer(self) -> RangeWriter: ...

    def punch(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def reopen_for_reading(self) -> DiskSource: ...

    def close(self) -> None: ...


class _FileWriter:
    def __init__(self, fd: int, path: str) -> None:
        self._fd = fd
        self._path = path

    def write(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                done += os.pwritev(self._fd, [view[done:]], offset + done)
            except OSError as exc:
                raise errors.on_write(exc, f"{self._path} offset {offset + done}") from exc

    def close(self) -> None:
        pass


class RawFileSink:
    """A raw file of exactly the disk's size, or a block device."""

    format = "raw"

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.lseek(self._fd, 0, os.SEEK_END) < size:
                os.ftruncate(self._fd, size)
        except OSError as exc:
            raise errors.on_write(exc, path) from exc

    def writer(self) -> RangeWriter:
        return _FileWriter(self._fd, self.path)

    def punch(self, offset: int, length: int) -> None:
        try:
            punch_hole(self._fd, offset, min(length, self.size - offset))
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise errors.on_write(exc, f"{self.path} (punching a hole)") from exc
            self._zero_by_writing(offset, min(length, self.size - offset))

    def _zero_by_writing(self, offset: int, length: int) -> None:
        # Only for filesystems that cannot punch holes (and block devices without
        # discard): correctness beats sparseness for the resumed tail.
        zeros = memoryview(bytes(1 << 20))
        writer = self.writer()
        for start in range(offset, offset + length, len(zeros)):
            writer.write(start, zeros[: min(len(zeros), offset + length - start)])

    def flush(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise errors.on_write(exc, f"{self.path} (flush)") from exc

    def reopen_for_reading(self) -> DiskSource:
        return RawFileSource(self.path, self.size)

    def close(self) -> None:
        os.close(self._fd)


class _NbdWriter:
    def __init__(self, client: nbd.NbdClient, path: str) -> None:
        self._client = client
        self._path = path

    def write(self, offset: int, view: memoryview) -> None:
        try:
            self._client.write(offset, view)
        except OSError as exc:
            raise errors.on_write(exc, f"{self._path} offset {offset}") from exc

    def close(self) -> None:
        self._client.close()


class Qcow2Sink:
    """An existing qcow2 image of the disk's virtual size, written through qemu-nbd."""

    format = "qcow2"

    def __init__(self, path: str) -> None:
        self.path = path
        self._server = nbd.QemuNbd(path, "qcow2", writable=True)
        self._control = self._server.connect()
        self.size = self._control.size

    def writer(self) -> RangeWriter:
        return _NbdWriter(self._server.connect(), self.path)

    def punch(self, offset: int, length: int) -> None:
        try:
            self._control.zero(offset, min(length, self.size - offset))
        except OSError as exc:
            raise errors.on_write(exc, f"{self.path} (zeroing)") from exc

    def flush(self) -> None:
        try:
            self._control.flush()
        except OSError as exc:
            raise errors.on_write(exc, f"{self.path} (flush)") from exc

    def reopen_for_reading(self) -> DiskSource:
        return QemuImageSource(self.path, "qcow2")

    def close(self) -> None:
        self._control.close()
        self._server.close()


def open_sink(path: str, fmt: str, size: int) -> DiskSink:
    if fmt == "raw":
        return RawFileSink(path, size)
    if fmt == "qcow2":
        return Qcow2Sink(path)
    raise errors.InvalidSourceError(f"unsupported target format {fmt!r} (raw or qcow2)")
