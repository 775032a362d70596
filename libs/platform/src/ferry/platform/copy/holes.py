"""After the flush: where the target has data the copy did not write, it must be zeros.

The copy reads and compares every range it wrote; what it never touched is
where the source has holes. A target that was not blank (a reused volume, the
stale data of a killed attempt past the checkpoint) could hold bytes there that
the guest would see. These helpers find the target's allocated ranges outside
what the copy covered and read them, so the digest's claim — the target's
guest-visible bytes are the source's — holds for the whole disk.
"""

from __future__ import annotations

from collections.abc import Iterator

from ferry.platform import errors
from ferry.platform.copy import checksum
from ferry.platform.copy.source import DiskSource, RangeReader
from ferry.proto.inventory import Extent

_ZEROS_CHUNK = bytes(checksum.CHUNK)


def rounded(extents: Iterator[Extent], size: int) -> Iterator[tuple[int, int]]:
    """``[start, end)`` of extents rounded out to whole blocks (what the copy reads), merged."""
    block = checksum.BLOCK
    current: tuple[int, int] | None = None
    for ext in extents:
        a = ext.offset // block * block
        b = min(-(-(ext.offset + ext.length) // block) * block, size)
        if current is not None and a <= current[1]:
            current = (current[0], max(current[1], b))
            continue
        if current is not None:
            yield current
        current = (a, b)
    if current is not None:
        yield current


def uncovered(target: Iterator[Extent], covered: Iterator[tuple[int, int]]) -> Iterator[Extent]:
    """The parts of the target's data extents that lie outside ``covered`` (both sorted)."""
    cover = next(covered, None)
    for ext in target:
        a, end = ext.offset, ext.offset + ext.length
        while a < end:
            while cover is not None and cover[1] <= a:
                cover = next(covered, None)
            if cover is None or end <= cover[0]:
                yield Extent(a, end - a)
                break
            if a < cover[0]:
                yield Extent(a, cover[0] - a)
            a = cover[1]


def holes_read_as_zeros(source: DiskSource, target: DiskSource) -> None:
    """Everything the copy did not compare must be zeros in the target (after the flush).

    The workers compared every block-rounded range they read from the source;
    what is left is the source's holes. The target's own allocation map says
    where it could hold anything but zeros there (stale data from a resumed
    attempt, a stray write); those few ranges are read and must be zeros.
    """
    size = target.size
    stray = uncovered(target.extents(), rounded(source.extents(), size))
    reader = target.reader()
    buffer = bytearray(checksum.CHUNK)
    try:
        for ext in stray:
            for offset in range(ext.offset, ext.offset + ext.length, len(buffer)):
                n = min(len(buffer), ext.offset + ext.length - offset)
                view = memoryview(buffer)[:n]
                reader.readinto(offset, view)
                if not buffer.startswith(memoryview(_ZEROS_CHUNK)[:n]):
                    raise errors.ChecksumMismatchError(
                        f"the target holds data at [{offset}, {offset + n}), "
                        "where the source is a hole"
                    )
    finally:
        reader.close()


class Sized:
    """A source seen with a given size (a target may be larger than the disk)."""

    def __init__(self, inner: DiskSource, size: int) -> None:
        self._inner = inner
        self._size = size

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        for ext in self._inner.extents():
            if ext.offset >= self._size:
                return
            yield Extent(ext.offset, min(ext.length, self._size - ext.offset))

    def reader(self) -> RangeReader:
        return self._inner.reader()

    def identity(self) -> str:
        return self._inner.identity()

    def close(self) -> None:
        self._inner.close()
