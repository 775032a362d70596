"""The source-side seam: what every provider (OVA, vSphere, oVirt, …) offers.

Services never import a provider implementation; they ask :mod:`ferry.providers.factory`
for one by type and talk to it through :class:`Provider`. The shapes a provider
returns are the wire contracts of :mod:`ferry.proto.inventory`, so the inventory can
travel inside commands unchanged.

Disk access has two faces because the data path chooses between them: a ranged
``read``/``extents`` API for Python copies, and a description a qemu tool can open
itself (:class:`QemuSource` with the image format named explicitly, or an NBD URI)
for ``qemu-img convert`` / ``nbdcopy``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import msgspec

from ferry.proto.inventory import Extent, Package, PowerState, Vm


class ProviderError(Exception):
    """A provider could not do what was asked; the message says what and why."""


class VmNotFound(ProviderError):
    """No VM with that id or name exists in the provider's inventory."""

    def __init__(self, wanted: str, known: list[str] | None = None) -> None:
        hint = f" (known: {', '.join(sorted(known)[:20])})" if known else ""
        super().__init__(f"VM {wanted!r} not found{hint}")
        self.wanted = wanted


class DiskNotFound(ProviderError):
    """The VM has no disk with that id."""

    def __init__(self, vm: str, disk_id: str) -> None:
        super().__init__(f"VM {vm!r} has no disk {disk_id!r}")


class ProviderNotSupported(ProviderError):
    """The provider type is known to the contracts but not implemented here yet."""


class QemuSource(msgspec.Struct, frozen=True, kw_only=True):
    """How a qemu tool opens a disk, with the format always named.

    ``options`` is a qemu block-layer option tree (``{"driver": "vmdk", "file": …}``).
    Never let qemu probe a format: an untrusted raw disk could then pose as qcow2
    with a backing file on the host.
    """

    format: str
    options: dict[str, Any]

    def filename(self) -> str:
        """The ``json:`` pseudo-filename that qemu-img and qemu-nbd accept."""
        return "json:" + json.dumps(self.options, separators=(",", ":"), sort_keys=True)

    def qemu_img_args(self) -> list[str]:
        """Arguments for the source side of ``qemu-img convert/map/info``."""
        return ["-f", self.format, self.filename()]


class V2vInput(msgspec.Struct, frozen=True, kw_only=True):
    """virt-v2v's input side: an argv fragment plus files it refers to.

    Credentials, when a provider needs them, live only in ``files`` (written 0600
    inside the work directory), never in ``argv``.
    """

    argv: list[str]
    files: list[str] = msgspec.field(default_factory=list)


@runtime_checkable
class DiskReader(Protocol):
    """One open source disk: guest-visible bytes, allocated ranges, qemu handles.

    Use as ``async with provider.open_disk(vm, disk_id) as disk``; leaving the block
    releases whatever the reader started (an NBD server, file handles).
    """

    @property
    def size(self) -> int:
        """Guest-visible size in bytes."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(self, offset: int, length: int) -> bytes:
        """Guest bytes ``[offset, offset+length)``; short only at the end of the disk."""
        ...

    async def extents(self) -> list[Extent]:
        """Ranges that may hold data; everything else reads as zeros."""
        ...

    def qemu_source(self) -> QemuSource:
        """The disk as a qemu block-layer description with an explicit format."""
        ...

    async def nbd_uri(self) -> str:
        """An NBD URI serving guest bytes (raw), valid until the reader is closed."""
        ...


class Provider(Protocol):
    """A source of VMs: inventory, power, disks and virt-v2v input."""

    async def check(self) -> None:
        """Raise :class:`ProviderError` when the source cannot be reached."""
        ...

    async def inventory(self) -> list[Vm]:
        """Every VM the source offers."""
        ...

    async def vm(self, id_or_name: str) -> Vm:
        """One VM by id (preferred) or name; :class:`VmNotFound` otherwise."""
        ...

    async def power_state(self, vm: Vm) -> PowerState: ...

    async def shutdown(self, vm: Vm, timeout: float) -> bool:  # noqa: ASYNC109 (source grace period)
        """Graceful shutdown, then forced off after ``timeout``; True when forced."""
        ...

    async def power_on(self, vm: Vm) -> None: ...

    def open_disk(self, vm: Vm, disk_id: str) -> DiskReader:
        """An unopened reader; enter it with ``async with``."""
        ...

    async def v2v_input(self, vm: Vm, workdir: Path) -> V2vInput:
        """virt-v2v ``-i …`` arguments for this VM, files written into ``workdir``."""
        ...


@runtime_checkable
class PackageLister(Protocol):
    """A provider read in packages (OVA) that can list each one with its verdict.

    :meth:`Provider.inventory` holds only the VMs that can be migrated; this holds
    every package, rejected ones with their reasons, for ``ferry inventory``.
    """

    async def packages(self) -> list[Package]: ...
