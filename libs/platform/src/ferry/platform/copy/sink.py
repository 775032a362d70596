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

from ferry.platform import errors
from ferry.platform.copy import nbd
from ferry.platform.copy.source import (
    DiskSource,
    QemuImageSource,
    RangeReader,
    RawFileSource,
    nbd_reader,
)

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


BUFFERED_ENV = "FERRY_COPY_BUFFERED"  # set: never use O_DIRECT (for comparisons)
_SYNC_FILE_RANGE_WRITE = 2
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


class RangeWriter(Protocol):
    def write(self, offset: int, view: memoryview) -> None: ...

    def close(self) -> None: ...


class DiskSink(Protocol):
    """The target of one copy."""

    format: str

    def writer(self) -> RangeWriter: ...

    def reader(self) -> RangeReader:
        """Reads of what was written so far (one per thread), for the copy's read-back."""
        ...

    def start_writeback(self, offset: int, length: int) -> None:
        """Hint: this range is final, start writing it to the device now."""
        ...

    def punch(self, offset: int, length: int) -> None: ...

    def flush(self) -> None: ...

    def reopen_for_reading(self) -> DiskSource: ...

    def close(self) -> None: ...


DIRECT_ALIGN = 4096  # offsets, lengths and buffer addresses of direct I/O


def _aligned(offset: int, length: int) -> bool:
    return offset % DIRECT_ALIGN == 0 and length % DIRECT_ALIGN == 0


class _FileWriter:
    """Writes with ``O_DIRECT`` when the range is aligned, through the page cache if not.

    A direct write goes from the copy's buffer to the device: no copy into
    the page cache (the biggest CPU cost of a buffered copy, measured here at
    about as much as reading and hashing together) and nothing left dirty for
    the final flush. The copy's buffers are page-aligned and its writes are
    whole 64 KiB blocks, so only a disk's unaligned tail goes the buffered way.
    """

    def __init__(self, fd: int, direct_fd: int, path: str) -> None:
        self._fd = fd
        self._direct_fd = direct_fd
        self._path = path

    def write(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            rest = view[done:]
            fd = self._fd
            if self._direct_fd >= 0 and _aligned(offset + done, len(rest)):
                fd = self._direct_fd
            try:
                done += os.pwritev(fd, [rest], offset + done)
            except OSError as exc:
                if exc.errno == errno.EINVAL and fd == self._direct_fd:
                    done += _buffered_write(self._fd, rest, offset + done, self._path)
                    continue
                raise errors.on_write(exc, f"{self._path} offset {offset + done}") from exc

    def close(self) -> None:
        pass


def _buffered_write(fd: int, view: memoryview, offset: int, path: str) -> int:
    try:
        return os.pwritev(fd, [view], offset)
    except OSError as exc:
        raise errors.on_write(exc, f"{path} offset {offset}") from exc


class _ReadBack:
    """Reads of the target itself (from the device when direct); failures are the target's."""

    def __init__(self, fd: int, direct_fd: int, path: str) -> None:
        self._fd = fd
        self._direct_fd = direct_fd
        self._path = path

    def readinto(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            rest = view[done:]
            fd = self._fd
            if self._direct_fd >= 0 and _aligned(offset + done, len(rest)):
                fd = self._direct_fd
            try:
                n = os.preadv(fd, [rest], offset + done)
            except OSError as exc:
                if exc.errno == errno.EINVAL and fd == self._direct_fd:
                    fd = self._fd
                    n = self._buffered(rest, offset + done)
                else:
                    where = f"{self._path} offset {offset + done} (read-back)"
                    raise errors.on_write(exc, where) from exc
            if n == 0:
                raise errors.TargetIOError(f"the target {self._path} ends before {offset + done}")
            done += n

    def _buffered(self, view: memoryview, offset: int) -> int:
        try:
            return os.preadv(self._fd, [view], offset)
        except OSError as exc:
            raise errors.on_write(exc, f"{self._path} offset {offset} (read-back)") from exc

    def close(self) -> None:
        pass


class RawFileSink:
    """A raw file of exactly the disk's size, or a block device."""

    format = "raw"

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.lseek(self._fd, 0, os.SEEK_END) < size:
                os.ftruncate(self._fd, size)
        except OSError as exc:
            raise errors.on_write(exc, path) from exc
        self._direct_fd = _open_direct(path)
        self._writeback = True

    @property
    def direct(self) -> bool:
        """Whether aligned writes and read-backs bypass the page cache."""
        return self._direct_fd >= 0

    def writer(self) -> RangeWriter:
        return _FileWriter(self._fd, self._direct_fd, self.path)

    def reader(self) -> RangeReader:
        return _ReadBack(self._fd, self._direct_fd, self.path)

    def start_writeback(self, offset: int, length: int) -> None:
        """Queue the range for writeback now, so the final fdatasync finds little left.

        Without it the kernel starts writing only when dirty pages pile up or
        age, and the flush at the end then waits for all of the data at once;
        with it the device writes while the copy still reads and hashes.
        Errors are not reported here: the fdatasync that follows reports them.
        """
        if self._direct_fd >= 0 and _aligned(offset, length):
            return  # written directly: nothing of it is dirty in the page cache
        if self._writeback and _libc.sync_file_range(
            self._fd, offset, length, _SYNC_FILE_RANGE_WRITE
        ):
            self._writeback = False  # not supported here: leave it to the flush

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
        if self._direct_fd >= 0:
            os.close(self._direct_fd)
            self._direct_fd = -1


def _open_direct(path: str) -> int:
    """A second descriptor with ``O_DIRECT``, or -1 where the filesystem has none (tmpfs…)."""
    if os.environ.get(BUFFERED_ENV):
        return -1
    try:
        return os.open(path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return -1


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
        # a writer and a read-back connection per copy thread, and the control one
        self._server = nbd.QemuNbd(path, "qcow2", writable=True, connections=256)
        self._control = self._server.connect()
        self.size = self._control.size

    def writer(self) -> RangeWriter:
        return _NbdWriter(self._server.connect(), self.path)

    def reader(self) -> RangeReader:
        return nbd_reader(self._server.connect(), self.path)

    def start_writeback(self, offset: int, length: int) -> None:
        pass  # qemu-nbd writes back on its own; the flush is a FLUSH request

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
