"""The source-side seam: what every provider (OVA, vSphere, oVirt, …) offers.

Services never import a provider implementation; they ask :mod:`ferry.providers.factory`
for one by type and talk to it through :class:`Provider`. The shapes a provider
returns are the wire contracts of :mod:`ferry.proto.inventory`, so the inventory can
travel inside commands unchanged.

Disk access has two faces because the data path chooses between them: a ranged
``read``/``extents`` API for Python copies, and a description a qemu tool can open
itself (:class:`QemuSource` with the image format named explicitly, or an NBD URI)
for ``qemu-img convert`` / ``nbdcopy``.

Warm migration adds one optional face, :class:`WarmSource`, the same for every
source that can track writes (libvirt checkpoints, vSphere CBT change ids, oVirt
incremental backups), so the precopy loop above it is written once.
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


class ChangedDisks(Protocol):
    """A point-in-time view of a VM's disks and what changed in them since ``since``.

    Entered with ``async with``; the view (a libvirt backup job, a vSphere snapshot, an
    oVirt backup) exists only inside the block and is always released on the way out,
    also on error or cancel. The new :attr:`checkpoint` outlives it: it is the ``since``
    of the next round, and its owner removes it with
    :meth:`WarmSource.remove_checkpoint` once it is no longer needed.
    """

    @property
    def checkpoint(self) -> str:
        """The checkpoint taken together with this view (opaque to the caller)."""
        ...

    @property
    def since(self) -> str | None:
        """The checkpoint the changes are relative to; None for the full view."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def size(self, disk_id: str) -> int:
        """Guest-visible size of one disk in bytes."""
        ...

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        """Ranges written since :attr:`since` (sorted, disjoint), at the source's tracking
        granularity; every allocated range for the full view. A range outside them is
        unchanged on the target (or, for the full view, zeros)."""
        ...

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        """Guest bytes of the view (not of the live disk), short only at the disk's end."""
        ...

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        """(Unix socket, export name) serving the view's raw guest bytes, for a data
        mover in another process; valid until the view is closed."""
        ...


@runtime_checkable
class WarmSource(Protocol):
    """What a provider offers for warm migration: changed-block tracking.

    The four operations of the workflow map onto two calls and a clean-up:
    ``changes(vm, None)`` starts tracking and gives the full view (copy every
    allocated extent); ``changes(vm, previous.checkpoint)`` lists and reads only what
    changed since; ``remove_checkpoint`` ends tracking for a checkpoint. Checkpoints a
    crashed run left behind are found with :meth:`checkpoints` and removed on restart.
    """

    def changes(self, vm: Vm, since: str | None) -> ChangedDisks:
        """An unopened view, taken atomically with a new checkpoint when entered.

        Raises :class:`CheckpointGone` (on enter) when ``since`` no longer exists at
        the source, so the caller knows it must copy in full again.
        """
        ...

    async def remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        """Forget ``checkpoint`` at the source; a checkpoint already gone is no error."""
        ...

    async def checkpoints(self, vm: Vm) -> list[str]:
        """The checkpoints Ferry made on ``vm`` that still exist, oldest first."""
        ...


class CheckpointGone(ProviderError):
    """The checkpoint a delta was asked against no longer exists at the source."""

    def __init__(self, vm: str, checkpoint: str) -> None:
        super().__init__(
            f"VM {vm!r}: checkpoint {checkpoint!r} no longer exists; copy the disks in full"
        )
        self.checkpoint = checkpoint
