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
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import msgspec

from ferry.proto.inventory import Extent, Package, PowerState, Vm


class ProviderError(Exception):
    """A provider could not do what was asked; the message says what and why."""


class SourceInterrupted(ProviderError):
    """A read the source broke off for a reason a new attempt need not meet (a session
    or lease that ended): the copy is retried, and resumes from its checkpoint."""


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


class FilePin(msgspec.Struct, frozen=True, kw_only=True):
    """A source file as a provider checked it: whoever opens it later must find it so.

    ``path`` is the name the option tree uses, ``name`` the file's name inside its
    package (extents of a VMDK descriptor resolve beside it), and ``device`` and
    ``inode`` what the provider saw. The reader opens ``path`` without following
    symlinks and refuses it unless the open descriptor is a regular file with one
    link and this device and inode (:mod:`ferry.platform.copy.pins`).
    """

    path: str
    name: str
    device: int
    inode: int


def repr_hiding(obj: msgspec.Struct, *secret: str) -> str:
    """``repr`` of a struct with the named fields shown as ``<hidden>`` when set: a
    repr ends up in log lines and tracebacks, a secret must not."""
    shown = (
        f"{name}={'<hidden>' if name in secret and value else repr(value)}"
        for name in obj.__struct_fields__
        if (value := getattr(obj, name)) is not None
    )
    return f"{type(obj).__name__}({', '.join(shown)})"


class NbdTls(msgspec.Struct, frozen=True, kw_only=True):
    """An NBD export served over TCP with TLS (a remote libvirt host's backup job), with
    the client's credentials (PEM). The key is a secret: the struct travels in a job file
    or Secret only, and its repr hides the credentials."""

    host: str
    port: int
    export: str
    ca: str
    cert: str
    key: str

    def __repr__(self) -> str:
        return repr_hiding(self, "cert", "key")


class HttpRange(msgspec.Struct, frozen=True, kw_only=True):
    """A raw disk read with ranged GETs over HTTPS (a vSphere flat extent on the datastore
    path), with what the request carries and how the server is trusted. ``cookie`` is a
    credential: the struct travels in a job file or Secret only, and its repr hides it.
    ``ca`` is the PEM the server's certificate must chain to (a pinned server's own
    certificate, then the only one trusted); ``insecure`` skips the check (the Provider
    said so); neither: the system's CAs."""

    url: str
    size: int  # the disk's bytes (the file may hold more)
    cookie: str = ""
    ca: str = ""
    insecure: bool = False

    def __repr__(self) -> str:
        return repr_hiding(self, "cookie")


class QemuSource(msgspec.Struct, frozen=True, kw_only=True):
    """How a qemu tool opens a disk, with the format always named.

    ``options`` is a qemu block-layer option tree (``{"driver": "vmdk", "file": …}``).
    Never let qemu probe a format: an untrusted raw disk could then pose as qcow2
    with a backing file on the host. ``pins``, when a provider checked the files
    the tree reads, are what they must still be when a copy opens them: every
    ``filename`` of the tree is then one of them.
    """

    format: str
    options: dict[str, Any]
    pins: tuple[FilePin, ...] = ()
    # The same disk over HTTPS for a copy that runs off this host (an oVirt image
    # transfer's URL, whose path is a secret ticket, and its CA's PEM); '' when none.
    url: str = ""
    ca: str = ""
    # The same disk as an NBD export over TCP with TLS (a remote libvirt host's backup
    # job) with the client's credentials, for a copy off this host; None when none.
    nbd_tls: NbdTls | None = None
    # The same disk read with ranged GETs over HTTPS with a session's cookie (a vSphere
    # flat extent), for a copy off this host; None when none.
    http_range: HttpRange | None = None

    def __repr__(self) -> str:
        return repr_hiding(self, "url", "nbd_tls", "http_range")

    def filename(self) -> str:
        """The ``json:`` pseudo-filename that qemu-img and qemu-nbd accept."""
        return "json:" + json.dumps(self.options, separators=(",", ":"), sort_keys=True)

    def qemu_img_args(self) -> list[str]:
        """Arguments for the source side of ``qemu-img convert/map/info``."""
        return ["-f", self.format, self.filename()]


class InputHold(Protocol):
    """What a conversion's input reads through and the provider must keep while virt-v2v
    runs (a vSphere session whose cookie the captive nbdkits carry).

    Entered around the conversion's workload and left when it ends. Leaving it with the
    conversion's error raises the provider's own reason instead (a
    :class:`SourceInterrupted`, chained to that error) when what it held was lost.
    """

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class V2vInput(msgspec.Struct, frozen=True, kw_only=True):
    """virt-v2v's input side: an argv fragment plus files it refers to.

    Credentials, when a provider needs them, live only in ``files`` (written 0600
    inside the work directory), never in ``argv``.
    """

    argv: list[str]
    files: list[str] = msgspec.field(default_factory=list)
    # Shares the input reads, path on this host → ``nfs://server/export/path``: a
    # conversion that runs elsewhere (a pod) mounts each read-only at the same path.
    shares: dict[str, str] = msgspec.field(default_factory=dict)
    # Helpers that must live exactly as long as virt-v2v (an nbdkit serving a disk it
    # reads): each is an nbdkit argv that runs the rest of the command captive
    # (``nbdkit --run``), the first outermost; their files are in ``files`` too.
    captive: list[list[str]] = msgspec.field(default_factory=list)
    # Held around the run by the one who runs virt-v2v; None when nothing needs it.
    hold: InputHold | None = None
    # Files of this host the input reads in place, too large to hand a workload as
    # secret files (disks a provider downloaded): a workload elsewhere cannot run it.
    host_files: list[str] = msgspec.field(default_factory=list)
    # Paths in the work directory that the workload makes itself (a helper's Unix
    # socket): where the workload sees its work directory elsewhere (a pod), they are
    # pointed there, in the argvs and the files. Other paths are left as they are.
    workload_paths: list[str] = msgspec.field(default_factory=list)


def read_span(offset: int, length: int, size: int) -> int:
    """How many of ``length`` bytes from ``offset`` a disk of ``size`` bytes holds (0 past
    its end): what every :class:`DiskReader`'s ``read`` may return; negative values are
    a caller's bug."""
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    return max(0, min(length, size - offset))


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


# Waits until this many more bytes may move under a copy's bandwidth budgets.
Pace = Callable[[int], Awaitable[None]]


@runtime_checkable
class PacedReader(Protocol):
    """A reader that moves the source's bytes itself before the copy reads them (a disk
    downloaded whole when the reader is entered): set ``pace`` before entering it, and
    the copy's bandwidth budgets pace that move, where the source's bytes cross; the
    copy of what it holds then moves none of the source's."""

    pace: Pace | None


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

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        """virt-v2v ``-i …`` arguments for this VM, files written into ``workdir``.

        ``pace``: the conversion's bandwidth budgets, for the source's bytes the provider
        moves itself before virt-v2v starts (an OVA's staged copies, an NFC download)."""
        ...


@runtime_checkable
class Configurable(Protocol):
    """A provider whose VMs come in several configurations (OVF deployment options).

    :meth:`Provider.inventory` describes each VM in its default configuration and
    lists the others in ``Vm.configurations``; a Plan may choose another per VM.
    """

    async def configured(self, vm: Vm, option: str) -> Vm:
        """``vm`` as configuration ``option`` describes it; :class:`ProviderError` if none."""
        ...


@runtime_checkable
class Validator(Protocol):
    """A source that knows reasons a VM cannot go beyond what its inventory shows
    (the daemon's abilities, the plan's warm or cold): asked in preflight."""

    async def preflight(self, vm: Vm, *, warm: bool) -> list[str]:
        """Sentences for the person who runs the plan; empty when the VM can go."""
        ...


@runtime_checkable
class TransferSource(Protocol):
    """A source whose disks are read through transfers it holds open (oVirt image
    transfers): one a killed or canceled copy left must be ended before the VM may run
    again (the engine keeps its disks locked), so the controller releases them before
    it restores the source's power and when a VM ends failed or canceled."""

    async def release_transfers(self, vm: Vm) -> int:
        """End every transfer Ferry holds on ``vm``; how many there were."""
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
class TlsNbdExport(Protocol):
    """A :class:`ChangedDisks` that may serve its disks over TCP with TLS (a remote
    libvirt host's job), so a data mover off the volume-service's host (a pod) can read
    the same picture itself."""

    def tls_export(self, disk_id: str) -> NbdTls | None:
        """The disk's export on the host with the client's credentials; None when the
        view serves only here. Valid until the view is closed."""
        ...


@runtime_checkable
class RangeExport(Protocol):
    """A :class:`ChangedDisks` whose disks can be read with ranged GETs over HTTPS (a
    vSphere snapshot's base extents on the datastore path), so a data mover off the
    volume-service's host (a pod) can read the same picture."""

    def range_export(self, disk_id: str) -> HttpRange | None:
        """The disk over HTTPS with the session's cookie (a secret: job file or Secret
        only); None when it cannot be read so. Valid until the view is closed."""
        ...


@runtime_checkable
class HttpsExport(Protocol):
    """A :class:`ChangedDisks` whose disks are also served over HTTPS (an oVirt backup's
    image transfers), so a data mover off the volume-service's host (a pod) can read
    the same picture."""

    def https_export(self, disk_id: str) -> tuple[str, str]:
        """(URL, CA PEM) of the view's disk; the URL names a ticket, a secret: it goes
        into a job file or Secret only. Valid until the view is closed."""
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

    def changes(self, vm: Vm, since: str | None, round_id: str = "") -> ChangedDisks:
        """An unopened view, taken atomically with a new checkpoint when entered.

        ``round_id`` names the round asking (migration, VM, round): a view opened
        again for the same round and ``since`` after a killed attempt may show that
        attempt's picture again, with the same checkpoint, so the copy resumes
        inside the round ('' never does). Raises :class:`CheckpointGone` (on enter)
        when ``since`` no longer exists at the source, so the caller knows it must
        copy in full again.
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
