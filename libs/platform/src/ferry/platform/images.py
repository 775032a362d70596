"""How a workload is told which source disk to read: :class:`ImageRef`.

A transfer runs in its own workload (a child process here, an importer or
populator pod in a cluster), so the source disk has to be described, not handed
over. The description is part of the platform's interface: the volume-service
builds it from a provider's disk, and every platform's workload reads it.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ferry.platform import errors
from ferry.proto.inventory import DiskFormat, Extent
from ferry.providers.base import FilePin, HttpRange, NbdTls, repr_hiding


class ImageRef(msgspec.Struct, frozen=True, kw_only=True):
    """A serialisable source description, handed to a workload process.

    Three shapes: an image file (``path`` + ``format``; a raw disk may sit at
    ``offset`` inside a bigger file, such as an OVA archive); a qemu block-layer
    option tree (``qemu_options``, what a provider's ``qemu_source()`` gives,
    with ``format`` still named); or an NBD export served by someone else. The
    shapes a workload off this host can reach ride along with the option tree
    (:meth:`for_remote_workload`): ``url`` (an ovirt-imageio transfer over HTTPS),
    ``nbd_tls`` (an NBD export over TLS), ``http_range`` (ranged GETs over HTTPS).
    """

    path: str = ""  # the file (for a qemu option tree: the file it reads, for identity)
    format: DiskFormat = DiskFormat.RAW
    offset: int = 0  # raw only: where the disk starts inside ``path``
    qemu_options: dict[str, Any] | None = None
    nbd_socket: str = ""  # an NBD export someone else serves (path is then a label)
    nbd_export: str = ""  # the export's name on that socket ('' for the default one)
    size: int | None = None  # the disk's size when the file is bigger (raw windows)
    extents: list[Extent] | None = None  # known allocation of an nbd_socket source
    # The files as the provider checked them (device, inode): when set, the
    # workload opens each itself, without following symlinks, and refuses one
    # that is not that file any more (``ferry.platform.copy.pins``).
    pins: tuple[FilePin, ...] = ()
    # The source's point-in-time picture this ref reads (a warm view's checkpoint).
    # A delta round resumes a killed attempt's progress only within the same one.
    snapshot: str = ""
    # The same disk over HTTPS, for a workload that cannot reach the volume-service's
    # sockets (the populator pod in a cluster): an ovirt-imageio transfer URL (its path
    # is the ticket, a secret: it travels in a job file or Secret only) and the PEM of
    # the CA that signs the daemon's certificate. Read only when no other shape is set.
    url: str = ""
    ca: str = ""
    # The same disk as an NBD export over TCP with TLS (a remote libvirt host's backup
    # job) with the client's credentials: for a workload off this host, like ``url``;
    # read (through a local qemu-nbd) only when no socket is given. A secret too.
    nbd_tls: NbdTls | None = None
    # The same raw disk read with ranged GETs over HTTPS with a session's cookie (a
    # vSphere flat extent): for a workload off this host, like ``url``; its allocation is
    # ``extents`` (the whole disk when unknown). A secret too.
    http_range: HttpRange | None = None

    def __repr__(self) -> str:
        return repr_hiding(self, "url", "nbd_tls", "http_range")

    def for_remote_workload(self) -> ImageRef:
        """What a workload off this host reads: the HTTPS, TLS or ranged-HTTPS shape, if any."""
        if self.url:
            return ImageRef(
                path=self.path, format=self.format, size=self.size, url=self.url, ca=self.ca
            )
        if self.nbd_tls is not None or self.http_range is not None:
            return ImageRef(
                path=self.path,
                size=self.size,
                extents=self.extents,
                snapshot=self.snapshot,
                nbd_tls=self.nbd_tls,
                http_range=None if self.nbd_tls is not None else self.http_range,
            )
        return self


def from_qemu_source(qemu: Any, path: str = "") -> ImageRef:
    """An ImageRef from a provider's ``QemuSource`` (``format`` + ``options``)."""
    formats = {"raw": DiskFormat.RAW, "qcow2": DiskFormat.QCOW2, "vmdk": DiskFormat.VMDK}
    if qemu.format not in formats:
        raise errors.InvalidSourceError(f"unsupported qemu format {qemu.format!r}")
    options = dict(qemu.options)
    pins = tuple(getattr(qemu, "pins", ()))
    window = _raw_window(options)
    if qemu.format == "raw" and window is not None:
        # read in place with pread: no qemu-nbd round trips
        return msgspec.structs.replace(window, pins=pins)
    return ImageRef(
        path=path,
        format=formats[qemu.format],
        qemu_options=options,
        pins=pins,
        url=str(getattr(qemu, "url", "")),
        ca=str(getattr(qemu, "ca", "")),
        nbd_tls=getattr(qemu, "nbd_tls", None),
        http_range=getattr(qemu, "http_range", None),
    )


def _raw_window(options: dict[str, Any]) -> ImageRef | None:
    """A raw option tree over a plain file (maybe a window of it), as a direct file read."""
    node = options.get("file")
    plain = (
        isinstance(node, dict)
        and node.get("driver") == "file"
        and set(node)
        <= {
            "driver",
            "filename",
        }
    )
    if (
        options.get("driver") != "raw"
        or not plain
        or set(options) - {"driver", "file", "offset", "size"}
    ):
        return None
    assert isinstance(node, dict)
    size = options.get("size")
    return ImageRef(
        path=str(node["filename"]),
        format=DiskFormat.RAW,
        offset=int(options.get("offset", 0)),
        size=int(size) if size is not None else None,
    )
