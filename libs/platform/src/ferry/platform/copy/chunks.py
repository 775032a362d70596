"""One chunk of a copy, end to end, on one worker thread.

A chunk is 4 MiB of the disk. The thread that takes it reads the allocated
ranges (rounded out to 64 KiB blocks) into its own aligned buffer, hashes each
block, skips blocks that are zeros, writes the rest in runs, reads the same
ranges back from the target into a second buffer and compares them. Each thread
keeps its own reader, writer and buffers, so no lock is taken on the data path;
the engine (``ferry.platform.copy.engine``) orders the results.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from ferry.platform import errors
from ferry.platform.copy import checksum
from ferry.platform.copy.sink import DIRECT_ALIGN, DiskSink, RangeWriter
from ferry.platform.copy.source import DiskSource, RangeReader
from ferry.proto.inventory import Extent

_ZEROS = bytes(checksum.BLOCK)


@dataclass(frozen=True)
class ChunkDone:
    leaf: bytes
    read: int  # bytes read: the allocated extents rounded out to whole blocks
    written: int
    allocated: int = 0  # bytes of allocated extents in the chunk (what progress counts)


def chunk_groups(extents: Iterator[Extent], size: int) -> Iterator[tuple[int, list[Extent]]]:
    """Extents clipped and grouped by chunk, chunks in order, empty chunks skipped."""
    current = -1
    group: list[Extent] = []
    for ext in extents:
        start, end = ext.offset, min(ext.offset + ext.length, size)
        while start < end:
            index = start // checksum.CHUNK
            stop = min(end, (index + 1) * checksum.CHUNK)
            if index != current:
                if group:
                    yield current, group
                current, group = index, []
            group.append(Extent(start, stop - start))
            start = stop
    if group:
        yield current, group


def block_ranges(group: list[Extent], chunk_start: int, chunk_len: int) -> list[tuple[int, int]]:
    """The chunk-relative ranges to read: extents rounded out to whole blocks, merged."""
    out: list[tuple[int, int]] = []
    block = checksum.BLOCK
    for ext in group:
        a = (ext.offset - chunk_start) // block * block
        b = min(-(-(ext.offset + ext.length - chunk_start) // block) * block, chunk_len)
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def aligned_buffer(size: int) -> tuple[bytearray, int, memoryview]:
    """A bytearray with a page-aligned window of ``size`` bytes (direct I/O needs it).

    Returns the array, where the window starts in it, and the window. The
    array is never resized (the window's export forbids it), so it never moves.
    """
    array = bytearray(size + DIRECT_ALIGN)
    address = ctypes.addressof(ctypes.c_char.from_buffer(array))
    base = -address % DIRECT_ALIGN
    return array, base, memoryview(array)[base : base + size]


class _Thread:
    """One worker thread's buffers and connections (never shared between threads).

    ``buffer[base + i]`` is byte ``i`` of the chunk, ``view`` the same window.
    """

    def __init__(self, reader: RangeReader, writer: RangeWriter | None, check: RangeReader | None):
        self.buffer, self.base, self.view = aligned_buffer(checksum.CHUNK)
        self.reader = reader
        self.writer = writer
        self.check = check  # reads the target back, when verifying
        self.echo = aligned_buffer(checksum.CHUNK)[2] if check is not None else None


class Workers:
    """Per-thread buffers, readers and writers, closed together at the end."""

    def __init__(self, source: DiskSource, sink: DiskSink | None, verify: bool = False) -> None:
        self._source = source
        self._sink = sink
        self._verify = verify and sink is not None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[RangeReader | RangeWriter] = []

    def _get(self) -> _Thread:
        local = self._local
        if not hasattr(local, "thread"):
            reader = self._source.reader()
            with self._lock:
                self._opened.append(reader)
            writer = check = None
            if self._sink is not None:
                writer = self._sink.writer()
                with self._lock:
                    self._opened.append(writer)
                if self._verify:
                    check = self._sink.reader()
                    with self._lock:
                        self._opened.append(check)
            local.thread = _Thread(reader, writer, check)
        thread: _Thread = local.thread
        return thread

    def chunk(self, index: int, group: list[Extent], size: int) -> ChunkDone:
        t = self._get()
        start, length = checksum.chunk_span(index, size)
        digests = checksum.block_digests_of_zeros(length)
        read = written = 0
        for a, b in block_ranges(group, start, length):
            t.reader.readinto(start + a, t.view[a:b])
            read += b - a
            written += self._hash_and_write(t, start, a, b, digests)
            if t.check is not None:
                _compare(t, start, a, b)
        if written and self._sink is not None:
            self._sink.start_writeback(start, length)
        allocated = sum(ext.length for ext in group)
        return ChunkDone(checksum.leaf(digests), read, written, allocated)

    @staticmethod
    def _hash_and_write(t: _Thread, start: int, a: int, b: int, digests: list[bytes]) -> int:
        """Hash the blocks of ``[a, b)``, write its non-zero runs; the bytes written."""
        buffer, base, view, writer = t.buffer, t.base, t.view, t.writer
        block = checksum.BLOCK
        zeros = memoryview(_ZEROS)
        written = 0
        run = -1
        for offset in range(a, b, block):
            n = min(block, b - offset)
            if buffer.startswith(zeros[:n], base + offset, base + offset + n):
                if run >= 0 and writer is not None:
                    writer.write(start + run, view[run:offset])
                    written += offset - run
                run = -1
                continue
            digests[offset // block] = checksum.block_digest(view[offset : offset + n])
            if run < 0:
                run = offset
        if run >= 0 and writer is not None:
            writer.write(start + run, view[run:b])
            written += b - run
        return written

    def close(self) -> None:
        for one in self._opened:
            one.close()


def _compare(t: _Thread, start: int, a: int, b: int) -> None:
    """Read ``[a, b)`` of the chunk back from the target; it must equal what was hashed.

    The whole range is compared, the zero blocks that were skipped included
    (they must read back as zeros), with one ``memcmp`` and no copy.
    """
    assert t.check is not None and t.echo is not None
    echo = t.echo[a:b]
    t.check.readinto(start + a, echo)
    if not t.buffer.startswith(echo, t.base + a, t.base + b):
        raise errors.ChecksumMismatchError(
            f"the target reads back different bytes than were written in "
            f"[{start + a}, {start + b}): the write did not land"
        )
