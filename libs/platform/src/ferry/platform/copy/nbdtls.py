"""An NBD export over TCP with TLS read by a workload off the volume-service's host.

A transfer pod cannot reach the volume-service's Unix sockets, but it can reach a remote
libvirt host's backup job on its TCP port, as the volume-service does: with the
client's credentials from the job (in the pod's Secret), written into a private folder
(0700, files 0600) and loaded by a read-only ``qemu-nbd`` on a private socket through a
``tls-creds-x509`` object that names the folder, never a key. The copy's readers
connect to that ``qemu-nbd`` (one upstream connection, their requests multiplexed on
it); its extents are the ones the job names (the round's changed ranges, or the
written ones of a full round).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ferry.platform import errors
from ferry.platform.copy import nbd
from ferry.platform.copy.source import RangeReader, _NbdReader, coalesce
from ferry.platform.images import ImageRef
from ferry.proto.inventory import Extent
from ferry.providers.libvirt import exports


class TlsNbdSource:
    """:class:`ferry.platform.copy.source.DiskSource` of an :attr:`ImageRef.nbd_tls`."""

    def __init__(self, ref: ImageRef) -> None:
        tls = ref.nbd_tls
        if tls is None:
            raise errors.InvalidSourceError("no TLS export to read")
        self._ref = ref
        self._label = ref.path or f"{tls.host}:{tls.port}/{tls.export}"
        self._credentials = exports.write_credentials(
            Path(tempfile.gettempdir()), tls.ca, tls.cert, tls.key
        )
        node = {"driver": "raw", "file": exports.map_node(tls.host, tls.port, tls.export)}
        filename = "json:" + json.dumps(node, separators=(",", ":"), sort_keys=True)
        try:
            self._server = nbd.QemuNbd(
                filename, "raw", objects=(exports.tls_object(self._credentials),)
            )
            probe = self._server.connect()
            try:
                self._size = ref.size if ref.size is not None else probe.size
                probe.readinto(0, memoryview(bytearray(min(512, probe.size))))
            finally:
                probe.close()
        except errors.InvalidSourceError as exc:
            self.close()
            raise errors.SourceGoneError(
                f"the NBD export on {tls.host}:{tls.port} could not be read over TLS: {exc.reason}"
            ) from None
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return self._size

    def extents(self) -> Iterator[Extent]:
        if self._ref.extents is None:
            return iter([Extent(0, self._size)])
        return coalesce(iter(self._ref.extents))

    def reader(self) -> RangeReader:
        return _NbdReader(self._server.connect(), self._label)

    def identity(self) -> str:
        return f"nbd:{self._label}:{self._size}"

    def close(self) -> None:
        server = getattr(self, "_server", None)
        if server is not None:
            server.close()
        shutil.rmtree(self._credentials, ignore_errors=True)
