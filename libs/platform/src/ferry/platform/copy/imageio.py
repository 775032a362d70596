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
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from typing import Any

from ferry.platform import errors
from ferry.platform.copy.source import RangeReader, coalesce
from ferry.platform.images import ImageRef
from ferry.proto.inventory import DiskFormat, Extent


class _Connection:
    def __init__(self, ref: ImageRef) -> None:
        parts = urllib.parse.urlsplit(ref.url)
        if parts.scheme != "https" or not parts.hostname:
            raise errors.InvalidSourceError("an imageio source must be an https URL")
        self.host, self.port, self.path = parts.hostname, parts.port or 443, parts.path
        context = ssl.create_default_context(cadata=ref.ca or None)
        self._con = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=60)

    def get(self, path: str, headers: dict[str, str] | None = None) -> bytes:
        for attempt in range(2):
            try:
                self._con.request("GET", path, headers=headers or {})
                res = self._con.getresponse()
                body = res.read()
            except ssl.SSLCertVerificationError as exc:
                self._con.close()
                raise errors.InvalidSourceError(
                    f"the imageio daemon at {self.host}:{self.port} presented a certificate "
                    f"the engine's CA does not verify ({exc.verify_message})"
                ) from None
            except (http.client.HTTPException, OSError) as exc:
                self._con.close()  # reconnects on the next request
                if attempt:  # worth another attempt of the copy, which resumes
                    where = f"{self.host}:{self.port}"
                    why = f"imageio at {where}: {type(exc).__name__}"
                    raise errors.SourceIOError(why) from None
                continue
            if res.status not in (200, 206):
                # not the body: imageio's messages name the ticket
                gone = res.status in (403, 404, 410)  # the ticket ended or expired
                kind = errors.SourceGoneError if gone else errors.SourceIOError
                raise kind(f"imageio answered {res.status} {res.reason}")
            return body
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._con.close()


class _Reader:
    def __init__(self, ref: ImageRef) -> None:
        self._con = _Connection(ref)

    def readinto(self, offset: int, view: memoryview) -> None:
        end = offset + len(view) - 1
        data = self._con.get(self._con.path, {"Range": f"bytes={offset}-{end}"})
        if len(data) != len(view):
            raise errors.SourceGoneError(
                f"imageio gave {len(data)} bytes at {offset}, {len(view)} were asked for"
            )
        view[:] = data

    def close(self) -> None:
        self._con.close()


class ImageioSource:
    """A raw disk behind an imageio transfer URL (``ImageRef.url``, ``ImageRef.ca``)."""

    def __init__(self, ref: ImageRef) -> None:
        if DiskFormat(ref.format) != DiskFormat.RAW:
            raise errors.InvalidSourceError("an imageio transfer is read as raw only")
        self._ref = ref
        probe = _Connection(ref)
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
        return _Reader(self._ref)

    def identity(self) -> str:
        ticket = hashlib.sha256(self._ref.url.encode()).hexdigest()[:16]
        return f"imageio:{ticket}:{self._size}"

    def close(self) -> None:
        pass
