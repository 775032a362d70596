"""A raw disk read with ranged GETs over HTTPS: a vSphere flat extent, from a pod.

The volume-service's host reads a vSphere disk through a local ``nbdkit curl`` on a
Unix socket, which a transfer or populator pod cannot reach. The pod reads the same
file itself, as that nbdkit does: ranged GETs on the datastore path with the session's
cookie, the server checked against the Provider's trust (:class:`HttpRange`). The
datastore path has no allocation map: what to read is the job's ``extents`` (CBT's
allocated or changed areas, when the volume-service had them), else the whole disk,
whose zero blocks the copy engine skips after reading.

A 401 is the session that ended (vCenter's idle timeout, a logout): transient, the
round is run again with a new login; a 404 is the file gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from ferry.platform import errors
from ferry.platform.copy import https
from ferry.platform.copy.source import RangeReader, coalesce
from ferry.platform.images import ImageRef
from ferry.proto.inventory import DiskFormat, Extent

SERVER = https.Server("vSphere", "the Provider's trust")


def _connection(ref: ImageRef) -> https.Connection:
    ranged = ref.http_range
    assert ranged is not None
    made = https.context(ranged.ca, ranged.insecure)
    headers = {"Cookie": ranged.cookie} if ranged.cookie else {}
    return https.Connection(ranged.url, made, SERVER, headers)


class HttpRangeSource:
    """``ImageRef.http_range`` (its ``size`` unless ``ImageRef.size`` says); ``extents``
    what holds data, else the whole disk."""

    def __init__(self, ref: ImageRef) -> None:
        if ref.http_range is None:
            raise errors.InvalidSourceError("a ranged HTTPS source needs its URL")
        if DiskFormat(ref.format) != DiskFormat.RAW:
            raise errors.InvalidSourceError("a ranged HTTPS source is read as raw only")
        self._ref = ref
        size = self._size = ref.size if ref.size is not None else ref.http_range.size
        extents = ref.extents if ref.extents is not None else [Extent(0, size)]
        if size < 0 or any(
            e.offset < 0 or e.length < 0 or e.offset + e.length > size for e in extents
        ):
            raise errors.InvalidSourceError("an extent of the ranged HTTPS source is off the disk")
        self._data = [e for e in extents if e.length]
        probe = _connection(ref)  # reached, trusted, there: before any byte is written
        try:
            if self._size:
                probe.ranged(0, memoryview(bytearray(1)))
        finally:
            probe.close()

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        return coalesce(iter(sorted(self._data, key=lambda e: e.offset)))

    def reader(self) -> RangeReader:
        return https.Reader(_connection(self._ref))

    def identity(self) -> str:
        assert self._ref.http_range is not None
        where = hashlib.sha256(self._ref.http_range.url.encode()).hexdigest()[:16]
        return f"https:{where}:{self._size}"

    def close(self) -> None:
        pass
