"""An ovirt-imageio transfer URL read over HTTPS: the source of a workload off the host.

A copy that runs where the volume-service's own sockets cannot be reached (the
populator pod in a cluster) reads the oVirt disk as Forklift's populator does: ranged
GETs on the image transfer's URL, the zero extents from its ``/extents?context=zero``,
the daemon's certificate checked against the CA the engine gave (PEM text, no file of
the volume-service's). The URL's path is the ticket, a secret: no message of this module
names it, and the resume identity is a digest of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from ferry.platform import errors
from ferry.platform.copy import https
from ferry.platform.copy.source import RangeReader, coalesce
from ferry.platform.images import ImageRef
from ferry.proto.inventory import DiskFormat, Extent

SERVER = https.Server("imageio", "the engine's CA", frozenset({403, 404, 410}))


def _connection(ref: ImageRef) -> https.Connection:
    """Over HTTPS, checked against the CA the engine gave (403, 404, 410: the ticket ended)."""
    return https.Connection(ref.url, https.context(ref.ca), SERVER)


class ImageioSource:
    """A raw disk behind an imageio transfer URL (``ImageRef.url``, ``ImageRef.ca``)."""

    def __init__(self, ref: ImageRef) -> None:
        if DiskFormat(ref.format) != DiskFormat.RAW:
            raise errors.InvalidSourceError("an imageio transfer is read as raw only")
        self._ref = ref
        probe = _connection(ref)
        try:
            raw: list[dict[str, Any]] = json.loads(probe.get(probe.path + "/extents?context=zero"))
        finally:
            probe.close()
        end = max((int(e["start"]) + int(e["length"]) for e in raw), default=0)
        self._size = ref.size if ref.size is not None else end
        self._data = [Extent(int(e["start"]), int(e["length"])) for e in raw if not e["zero"]]

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        return coalesce(iter(self._data))

    def reader(self) -> RangeReader:
        return https.Reader(_connection(self._ref))

    def identity(self) -> str:
        ticket = hashlib.sha256(self._ref.url.encode()).hexdigest()[:16]
        return f"imageio:{ticket}:{self._size}"

    def close(self) -> None:
        pass
