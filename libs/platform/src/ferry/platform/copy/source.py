"""What the copy needs from a source disk: its size, its allocated extents, ranged reads.

A provider can hand the copy any object that satisfies ``DiskSource``. For a
workload running in its own process the source must be described instead of
passed, so ``ImageRef`` names an image file with its format stated explicitly
(qemu-img is never allowed to probe) or an NBD socket exported by someone else;
``open_source`` turns that description into a ``DiskSource``.

Raw files are read with ``pread`` and their extents found with
``SEEK_DATA``/``SEEK_HOLE``; a streamOptimized VMDK of the usual shape is
inflated in-process by every copy thread (``ferry.platform.copy.vmdk``, after
``qemu-img info`` vetted it); every other format is decoded by ``qemu-nbd`` and
mapped with ``qemu-img map``, streamed line by line so memory stays flat.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import threading
from collections.abc import Iterator
from typing import Any, Protocol

from ferry.platform import errors
from ferry.platform.copy import nbd, pins
from ferry.platform.images import ImageRef
from ferry.proto.inventory import DiskFormat, Extent
from ferry.providers.base import FilePin

QEMU_FORMATS: dict[str, str] = {
    DiskFormat.RAW: "raw",
    DiskFormat.QCOW2: "qcow2",
    DiskFormat.VMDK_STREAM: "vmdk",
    DiskFormat.VMDK_FLAT: "vmdk",
    DiskFormat.VMDK: "vmdk",
}


class RangeReader(Protocol):
    """Reads of one source; one reader per thread."""

    def readinto(self, offset: int, view: memoryview) -> None: ...

    def close(self) -> None: ...


class DiskSource(Protocol):
    """The small interface the data path needs from a source disk."""

    @property
    def size(self) -> int: ...

    def extents(self) -> Iterator[Extent]:
        """Allocated ranges, sorted and disjoint; everything else reads as zeros."""
        ...

    def reader(self) -> RangeReader: ...

    def identity(self) -> str:
        """Changes when the source's content may have changed (for resume)."""
        ...

    def close(self) -> None: ...


def qemu_format(fmt: DiskFormat | str) -> str:
    try:
        return QEMU_FORMATS[DiskFormat(fmt)]
    except (KeyError, ValueError):
        raise errors.InvalidSourceError(f"unsupported disk format {fmt!r}") from None


def _stat(path: str) -> os.stat_result:
    try:
        return os.stat(path)
    except FileNotFoundError:
        raise errors.SourceGoneError(f"the source disk {path} does not exist") from None
    except OSError as exc:
        raise errors.on_read(exc, path) from exc


def coalesce(extents: Iterator[Extent]) -> Iterator[Extent]:
    pending: Extent | None = None
    for ext in extents:
        if ext.length <= 0:
            continue
        if pending is not None and pending.offset + pending.length == ext.offset:
            pending = Extent(pending.offset, pending.length + ext.length)
            continue
        if pending is not None:
            yield pending
        pending = ext
    if pending is not None:
        yield pending


def _is_block(st: os.stat_result) -> bool:
    return stat.S_ISBLK(st.st_mode)


class _FileReader:
    def __init__(self, fd: int, path: str, size: int, base: int) -> None:
        self._fd = fd
        self._path = path
        self._size = size
        self._base = base

    def readinto(self, offset: int, view: memoryview) -> None:
        done = 0
        while done < len(view):
            try:
                n = os.preadv(self._fd, [view[done:]], self._base + offset + done)
            except OSError as exc:
                raise errors.on_read(exc, f"{self._path} offset {offset + done}") from exc
            if n == 0:
                raise errors.SourceGoneError(
                    f"the source disk {self._path} shrank below {offset + done} bytes "
                    f"while it was read (expected {self._size})"
                )
            done += n

    def close(self) -> None:
        pass


def nbd_reader(client: nbd.NbdClient, label: str) -> RangeReader:
    """Ranged reads over one NBD connection (closed with the reader)."""
    return _NbdReader(client, label)


class RawFileSource:
    """A raw image file or block device, or a raw disk at ``base`` inside a file."""

    def __init__(
        self, path: str, size: int | None = None, base: int = 0, pin: FilePin | None = None
    ) -> None:
        self.path = path
        if pin is not None:  # opened once, checked on the descriptor, read only through it
            self._fd = pins.open_pinned(pin)
            self._stat = os.fstat(self._fd)
        else:
            self._stat = _stat(path)
            try:
                self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise errors.on_read(exc, path) from exc
        end = os.lseek(self._fd, 0, os.SEEK_END)
        self._base = base
        self._size = size if size is not None else end - base
        if base < 0 or self._size < 0 or (not _is_block(self._stat) and base + self._size > end):
            os.close(self._fd)
            raise errors.InvalidSourceError(
                f"{path}: a disk of {self._size} bytes at offset {base} does not fit in the file"
            )

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        return coalesce(self._seek_extents())

    def _seek_extents(self) -> Iterator[Extent]:
        current = os.fstat(self._fd)
        if current.st_nlink == 0 and not _is_block(current):
            raise errors.SourceGoneError(f"the source disk {self.path} was deleted")
        if not _is_block(current) and current.st_size < self._base + self._size:
            raise errors.SourceGoneError(
                f"the source disk {self.path} shrank to {current.st_size} bytes "
                f"(expected {self._size})"
            )
        base, limit = self._base, self._base + self._size
        offset = base
        while offset < limit:
            try:
                start = os.lseek(self._fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return
                if exc.errno == errno.EINVAL:  # no SEEK_DATA here: all of it is data
                    yield Extent(offset - base, limit - offset)
                    return
                raise errors.on_read(exc, self.path) from exc
            if start >= limit:
                return
            end = min(os.lseek(self._fd, start, os.SEEK_HOLE), limit)
            yield Extent(start - base, end - start)
            offset = end

    def reader(self) -> RangeReader:
        return _FileReader(self._fd, self.path, self._size, self._base)

    def identity(self) -> str:
        st = self._stat
        real = os.path.realpath(self.path)
        return f"raw:{real}@{self._base}:{st.st_ino}:{self._size}:{st.st_mtime_ns}"

    def close(self) -> None:
        os.close(self._fd)


class _NbdReader:
    def __init__(self, client: nbd.NbdClient, label: str) -> None:
        self._client = client
        self._label = label

    def readinto(self, offset: int, view: memoryview) -> None:
        try:
            self._client.readinto(offset, view)
        except OSError as exc:
            raise errors.on_read(exc, f"{self._label} offset {offset}") from exc

    def close(self) -> None:
        self._client.close()


class QemuImageSource:
    """Any format qemu reads (qcow2, VMDK flat and streamOptimized, raw…), via qemu-nbd.

    ``options`` is a qemu block-layer option tree (opened as a ``json:`` filename)
    for images a provider describes in place, such as a disk inside an archive.
    """

    def __init__(
        self,
        path: str,
        fmt: DiskFormat | str,
        options: dict[str, Any] | None = None,
        pinned: tuple[FilePin, ...] = (),
    ) -> None:
        self.path = path
        self.format = qemu_format(fmt)
        self._tree: pins.PinnedTree | None = None
        # The resume identity names the files as the provider did, not the private links.
        self._named = path
        if options is not None:
            self._named = "json:" + json.dumps(options, separators=(",", ":"), sort_keys=True)
        if pinned:
            # Every file of the tree opened and checked once, now; qemu reads the
            # descriptors (/dev/fd/N via pass_fds), never the names again.
            tree = options if options is not None else _file_tree(self.format, path)
            self._tree = pins.PinnedTree(tree, pinned)
            options = self._tree.options
            self._stat: os.stat_result | None = os.fstat(self._tree.fds[0])
        else:
            self._stat = _stat(path) if path or options is None else None
        self._fds = self._tree.fds if self._tree is not None else ()
        self.filename = path
        if options is not None:
            self.filename = "json:" + json.dumps(options, separators=(",", ":"), sort_keys=True)
        try:
            info = refuse_external_files(
                self.filename, self.format, check_paths=options is None, pass_fds=self._fds
            )
            if self._tree is not None:
                pins.check_extents(info, self._tree.links)
            self._server = nbd.QemuNbd(self.filename, self.format, pass_fds=self._fds)
        except BaseException:
            if self._tree is not None:
                self._tree.close()
            raise
        probe = self._server.connect()
        self._size = probe.size
        probe.close()
        # qemu-nbd decodes (inflates a compressed VMDK, walks qcow2 tables) on one
        # thread, so further readers get servers of their own, up to one per
        # core: the copy threads then decode on all cores instead of queueing on one.
        self._lock = threading.Lock()
        self._spare: list[nbd.QemuNbd] = [self._server]
        self._servers: list[nbd.QemuNbd] = [self._server]

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        return coalesce(self._map())

    def _map(self) -> Iterator[Extent]:
        args = ["qemu-img", "map", "--output=json", "-f", self.format, self.filename]
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, pass_fds=self._fds
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                text = line.strip().lstrip("[").rstrip("]").rstrip(",").strip()
                if not text:
                    continue
                entry = json.loads(text)
                if entry.get("data") and not entry.get("zero"):
                    yield Extent(int(entry["start"]), int(entry["length"]))
        finally:
            proc.stdout.close()
            stderr = proc.stderr.read() if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            code = proc.wait()
        if code != 0:
            raise errors.SourceIOError(f"qemu-img map of {self.path} failed: {stderr.strip()}")

    def reader(self) -> RangeReader:
        with self._lock:
            server = self._spare.pop() if self._spare else None
            if server is None and len(self._servers) >= (os.cpu_count() or 1):
                server = self._servers[len(self._servers) % (os.cpu_count() or 1)]
        if server is None:
            server = nbd.QemuNbd(self.filename, self.format, pass_fds=self._fds)
            with self._lock:
                self._servers.append(server)
        return _NbdReader(server.connect(), self.path)

    def identity(self) -> str:
        st = self._stat
        name = self._named if self._named != self.path else os.path.realpath(self.path)
        stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}" if st is not None else ""
        return f"{self.format}:{name}:{stamp}"

    def close(self) -> None:
        with self._lock:
            servers, self._servers, self._spare = self._servers, [], []
        for server in servers:
            server.close()
        if self._tree is not None:
            self._tree.close()


def refuse_external_files(
    path: str, fmt: str, *, check_paths: bool = True, pass_fds: tuple[int, ...] = ()
) -> dict[str, Any]:
    """Never let qemu follow an image out of its directory.

    A qcow2 may name a backing file or an external data file, a VMDK descriptor
    may name extents anywhere: qemu would read them. The provider validates its
    input first; this is the data path's own guard. ``qemu-img info`` does not
    open backing files, so asking is safe.
    """
    args = ["qemu-img", "info", "--output=json", "-f", fmt, path]
    done = subprocess.run(args, capture_output=True, text=True, check=False, pass_fds=pass_fds)
    if done.returncode != 0:
        raise errors.InvalidSourceError(f"not a valid {fmt} image: {done.stderr.strip()[-300:]}")
    info: dict[str, Any] = json.loads(done.stdout)
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise errors.InvalidSourceError(f"{path}: images with a backing file are not accepted")
    data = info.get("format-specific", {}).get("data", {})
    if data.get("data-file"):
        raise errors.InvalidSourceError(f"{path}: qcow2 with an external data file is refused")
    if not check_paths:
        return info  # an option tree from a provider names its files itself
    home = os.path.dirname(os.path.realpath(path))
    for extent in data.get("extents", []):
        target = os.path.realpath(os.path.join(home, str(extent.get("filename", ""))))
        if os.path.commonpath([home, target]) != home:
            raise errors.InvalidSourceError(f"{path}: a VMDK extent points outside its directory")
    return info


class NbdExportSource:
    """An NBD export served by someone else (nbdkit for a provider, for example)."""

    def __init__(self, ref: ImageRef) -> None:
        self._ref = ref
        try:
            probe = nbd.NbdClient(ref.nbd_socket, ref.nbd_export)
        except OSError as exc:
            raise errors.SourceGoneError(f"cannot reach the NBD export: {exc}") from exc
        self._size = ref.size if ref.size is not None else probe.size
        probe.close()

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        if self._ref.extents is None:
            return iter([Extent(0, self._size)])
        return coalesce(iter(self._ref.extents))

    def reader(self) -> RangeReader:
        try:
            client = nbd.NbdClient(self._ref.nbd_socket, self._ref.nbd_export)
        except OSError as exc:
            raise errors.SourceGoneError(f"cannot reach the NBD export: {exc}") from exc
        return _NbdReader(client, self._ref.path or self._ref.nbd_socket)

    def identity(self) -> str:
        return f"nbd:{self._ref.path or self._ref.nbd_socket}:{self._size}"

    def close(self) -> None:
        pass


def open_source(ref: ImageRef) -> DiskSource:
    """Open a described source; raw files are read directly, the rest through qemu."""
    if ref.nbd_socket:
        return NbdExportSource(ref)
    if ref.nbd_tls is not None and ref.qemu_options is None:  # (a pod's: no local shape)
        from ferry.platform.copy.nbdtls import TlsNbdSource

        return TlsNbdSource(ref)
    if ref.url and ref.qemu_options is None:
        from ferry.platform.copy.imageio import ImageioSource

        return ImageioSource(ref)
    if ref.http_range is not None and ref.qemu_options is None:
        from ferry.platform.copy.httprange import HttpRangeSource

        return HttpRangeSource(ref)
    if ref.qemu_options is not None or (ref.pins and DiskFormat(ref.format) != DiskFormat.RAW):
        if ref.offset:
            raise errors.InvalidSourceError("only a raw disk can be read at an offset")
        return QemuImageSource(ref.path, ref.format, ref.qemu_options, ref.pins)
    if DiskFormat(ref.format) == DiskFormat.RAW:
        pin = pins.pin_for(ref.pins, ref.path) if ref.pins else None
        return RawFileSource(ref.path, ref.size, ref.offset, pin)
    if ref.offset:
        raise errors.InvalidSourceError("only a raw disk can be read at an offset")
    if DiskFormat(ref.format) in (DiskFormat.VMDK_STREAM, DiskFormat.VMDK):
        streamed = _vmdk_stream(ref.path)
        if streamed is not None:
            return streamed
    return QemuImageSource(ref.path, ref.format)


def _file_tree(fmt: str, path: str) -> dict[str, Any]:
    return {"driver": fmt, "file": {"driver": "file", "filename": path}}


def _vmdk_stream(path: str) -> DiskSource | None:
    """A streamOptimized VMDK decoded in-process, when it has the plain shape.

    qemu still vets the file first (``qemu-img info``, the same guard as for
    every image), so both agree it is a VMDK before a byte of data is read.
    """
    from ferry.platform.copy.vmdk import VmdkStreamSource

    _stat(path)
    refuse_external_files(path, "vmdk")
    try:
        return VmdkStreamSource.open(path)
    except OSError as exc:
        raise errors.on_read(exc, path) from exc
