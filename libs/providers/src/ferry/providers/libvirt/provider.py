"""The libvirt/KVM provider: a libvirt URI, its domains, their power and their disks.

Everything goes through libvirt-python on worker threads (:mod:`.client`); data is
read through QEMU's own NBD server in pull-mode backups (:mod:`.backup`), so
Ferry never opens a running guest's image file behind QEMU's back. Warm migration
is :class:`ferry.providers.base.WarmSource`: each round is a backup job taken
with a new checkpoint, whose export lists exactly the blocks written since the
previous one.

``settings.workdir`` (default: the system's temporary directory) holds the
backup jobs' sockets and scratch files. A remote host's jobs serve over TCP with
TLS and Ferry reads them through local relays (:mod:`.exports`: the settings
``backupTransport``, ``backupHost``, ``backupPorts`` and the Secret's
``backupCACert``, ``backupClientCert``, ``backupClientKey``); a shut-off VM there
is read through a job of the domain started paused (:mod:`.paused`), its files being
on that host.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import libvirt

from ferry.proto.inventory import Extent, PowerState, Vm
from ferry.providers.base import (
    ChangedDisks,
    NbdTls,
    Pace,
    ProviderError,
    TlsNbdExport,
    V2vInput,
    VmNotFound,
)
from ferry.providers.libvirt import (
    backup,
    exports,
    inventory,
    jobs,
    offline,
    paused,
    power,
    v2v,
    validator,
)
from ferry.providers.libvirt.client import Client
from ferry.providers.libvirt.reader import FileDisk, LibvirtDiskReader, SharedViews


class LibvirtProvider:
    """A :class:`ferry.providers.base.Provider` and :class:`WarmSource` over one URI."""

    def __init__(
        self,
        uri: str,
        secret: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = Client(uri, secret)
        self._username = str((secret or {}).get("username", ""))
        self._password = str((secret or {}).get("password", ""))
        root = (settings or {}).get("workdir") or os.path.join(
            tempfile.gettempdir(), "ferry-libvirt"
        )
        self.workdir = Path(str(root))
        self.transport = exports.transport_of(uri, settings or {})
        self._secret_keys = exports.missing_keys(secret or {})
        self._tls = (
            exports.tls_of(uri, settings or {}, secret or {}) if self.transport == "tls" else None
        )
        self._credentials: Path | None = None
        self._views = SharedViews(self._cold_view)

    def __repr__(self) -> str:
        return f"LibvirtProvider({self.client.uri!r})"

    @property
    def local(self) -> bool:
        """True when the daemon runs on this host (its files and sockets are ours to open)."""
        return not urlsplit(self.client.uri).hostname

    def _remote(self, vm: Vm) -> tuple[exports.Tls, Path] | None:
        """The TLS transport and the folder of Ferry's credentials (written once, here)."""
        if self.transport != "tls":
            return None
        if self._tls is None:
            raise exports.TransportError(self._tls_missing(vm))
        if self._credentials is None:
            tls, workdir = self._tls, backup.own_workdir(self.workdir)
            self._credentials = exports.write_credentials(workdir, tls.ca, tls.cert, tls.key)
        return self._tls, self._credentials

    def _tls_missing(self, vm: Vm) -> str:
        return (
            f"VM {vm.name} runs on {self._host()}, whose backup jobs Ferry reads over NBD "
            f"with TLS; the Provider's Secret has no {', '.join(self._secret_keys)} (PEM)"
        )

    # -- Provider ---------------------------------------------------------------------

    async def check(self) -> None:
        await self.client.call(lambda: self.client.connection().getLibVersion())

    async def inventory(self) -> list[Vm]:
        return await self.client.call(self._inventory)

    def _inventory(self) -> list[Vm]:
        found: list[Vm] = []
        for dom in self.client.connection().listAllDomains(0):
            try:
                found.append(self._vm(dom))
            except libvirt.libvirtError:
                continue  # undefined between the listing and the look: not inventory
        return sorted(found, key=lambda v: v.name)

    async def vm(self, id_or_name: str) -> Vm:
        return await self.client.call(lambda: self._vm(self.client.domain(id_or_name)))

    def _vm(self, dom: libvirt.virDomain) -> Vm:
        root = inventory.parse(dom.XMLDesc(0))
        conn = self.client.connection()

        def sizes(target: str) -> tuple[int, int]:
            capacity, allocation, _physical = dom.blockInfo(target, 0)
            return int(capacity), int(allocation)

        def storage(path: str) -> str:
            try:
                return str(conn.storageVolLookupByPath(path).storagePoolLookupByVolume().name())
            except libvirt.libvirtError:
                return os.path.dirname(path)  # not in a pool: its directory is its storage

        return inventory.vm(root, power.state(dom), sizes, storage, host=self._host())

    def _host(self) -> str:
        return urlsplit(self.client.uri).hostname or "localhost"

    async def power_state(self, vm: Vm) -> PowerState:
        return await self.client.call(lambda: power.state(self.client.domain(vm.id)))

    async def shutdown(self, vm: Vm, timeout: float) -> bool:  # noqa: ASYNC109 (source grace period)
        return await self.client.call(lambda: power.shutdown(self.client.domain(vm.id), timeout))

    async def power_on(self, vm: Vm) -> None:
        await self.client.call(lambda: power.start(self.client.domain(vm.id)))

    def open_disk(self, vm: Vm, disk_id: str) -> LibvirtDiskReader:
        return LibvirtDiskReader(
            vm,
            disk_id,
            self._running(vm),
            self._views,
            self._file(vm, disk_id),
            paused_reads=self.transport == "tls",
        )

    async def _cold_view(self, vm: Vm) -> backup.Backup | paused.PausedView:
        """A full view without tracking: the running domain's job, or (read over TLS) the
        shut-off domain's started paused."""
        view = backup.Backup(
            self.client, vm, None, self.workdir, checkpoint=False, remote=self._remote(vm)
        )
        if await self._running(vm)():
            return view
        return paused.PausedView(self.client, vm, view)

    def _running(self, vm: Vm) -> Callable[[], Awaitable[bool]]:
        """Whether the domain runs; one a killed Ferry left started paused is destroyed
        first (it was off: :mod:`.paused`)."""

        def look() -> bool:
            dom = self.client.domain(vm.id)
            paused.end_leftover(dom)
            return bool(dom.isActive())

        async def running() -> bool:
            return await self.client.call(look)

        return running

    def _file(self, vm: Vm, disk_id: str) -> Callable[[], Awaitable[FileDisk]]:
        async def file_disk() -> FileDisk:
            if not self.local:
                raise ProviderError(
                    f"VM {vm.name} is off on {self._host()}: its disk files are not on this host"
                )
            xml = await self.client.call(lambda: self.client.domain(vm.id).XMLDesc(0))
            for disk in inventory.disks(inventory.parse(xml))[0]:
                if disk.target == disk_id:
                    if disk.backing:
                        raise ProviderError(f"VM {vm.name}: disk {disk_id} has a backing chain")
                    return FileDisk(disk.path, disk.format, disk.kind == "block")
            raise VmNotFound(f"{vm.name}/{disk_id}")

        return file_disk

    async def v2v_input(self, vm: Vm, workdir: Path, *, pace: Pace | None = None) -> V2vInput:
        # virt-v2v reads the disks itself over libvirt: nothing of Ferry's moves them, so
        # nothing could hold them to a budget (its --bandwidth is ignored for -i libvirt).
        # No migration comes here (libvirt is flow 2, or flow 1 when warm); were one to,
        # it is refused rather than read past its budget.
        if pace is not None:
            raise ProviderError(
                f"VM {vm.name!r}: virt-v2v would read its disks over libvirt itself, outside "
                "the bandwidth budgets that apply to it; libvirt guests are copied by the "
                "volume-service (flow 2) and converted in place"
            )
        return v2v.input_args(self.client.uri, vm.name, workdir, self._username, self._password)

    # -- preflight --------------------------------------------------------------------

    async def preflight(self, vm: Vm, *, warm: bool) -> list[str]:
        """Reasons this VM cannot be migrated as planned (empty: it can)."""
        supported = await self.client.call(self._backup_supported)
        readable_off = self.local or self.transport == "tls"  # files here, or started paused
        found = validator.reasons(vm, warm=warm, backup_supported=supported, local=readable_off)
        running = vm.power_state == PowerState.ON
        if self.transport == "tls" and self._tls is None and running and vm.disks:
            found.append(self._tls_missing(vm))
        return found

    def _backup_supported(self) -> bool:
        caps = self.client.connection().getDomainCapabilities(None, None, None, None, 0)
        node = inventory.parse(caps).find("features/backup")
        return node is not None and node.get("supported") == "yes"

    # -- WarmSource -------------------------------------------------------------------

    def changes(self, vm: Vm, since: str | None, round_id: str = "") -> ChangedDisks:
        # A killed attempt's picture is found without round_id: its backup job, from
        # the same checkpoint, is taken over (backup.py).
        return _View(self, vm, since)

    def _view(self, vm: Vm, since: str | None, running: bool) -> ChangedDisks:
        if running:
            return backup.Backup(self.client, vm, since, self.workdir, remote=self._remote(vm))
        if self.transport == "tls":  # the files are on the host: a job of it started paused
            inner = backup.Backup(
                self.client, vm, since, self.workdir, checkpoint=False, remote=self._remote(vm)
            )
            return paused.PausedView(self.client, vm, inner)
        if not self.local:
            raise ProviderError(f"VM {vm.name} is off on {self._host()}: no view of its disks")
        return offline.OfflineView(self.client, vm, since, self.workdir)

    async def remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        await self.client.call(self._remove_checkpoint, vm, checkpoint)

    def _remove_checkpoint(self, vm: Vm, checkpoint: str) -> None:
        dom = self.client.domain(vm.id)
        paused.end_leftover(dom)
        if not dom.isActive() and self.transport == "tls":
            if checkpoint not in [c.getName() for c in dom.listAllCheckpoints(0)]:
                return  # already gone: no start for nothing
            # the files are on the host: libvirt removes the bitmaps of a running domain
            with paused.started_paused(dom, vm.name):
                self._delete_checkpoint(dom, checkpoint)
            return
        self._delete_checkpoint(dom, checkpoint)  # (also a file bitmap whose metadata went)

    def _delete_checkpoint(self, dom: libvirt.virDomain, checkpoint: str) -> None:
        active = bool(dom.isActive())
        if active:
            jobs.abort_leftover(dom)  # a killed round's job would hold the checkpoint
        try:
            found = dom.checkpointLookupByName(checkpoint, 0)
            # libvirt deletes an inactive domain's checkpoint only as metadata;
            # its bitmaps are then removed from the files below.
            found.delete(0 if active else libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN_CHECKPOINT:
                raise
        if not active and self.local:
            disks = inventory.disks(inventory.parse(dom.XMLDesc(0)))[0]
            offline.remove_bitmaps([d.path for d in disks if d.format == "qcow2"], checkpoint)

    async def checkpoints(self, vm: Vm) -> list[str]:
        return await self.client.call(self._checkpoints, vm)

    def _checkpoints(self, vm: Vm) -> list[str]:
        dom = self.client.domain(vm.id)
        ours = [
            c
            for c in dom.listAllCheckpoints(libvirt.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL)
            if c.getName().startswith(jobs.CHECKPOINT_PREFIX)
        ]
        return [c.getName() for c in ours]

    async def release_leftovers(self, vm: Vm) -> bool:
        """End a backup job, or a paused start, a killed Ferry left on ``vm``; True when
        there was one."""

        def release() -> bool:
            dom = self.client.domain(vm.id)
            return jobs.abort_leftover(dom) | paused.end_leftover(dom)

        return await self.client.call(release)

    async def close(self) -> None:
        credentials, self._credentials = self._credentials, None
        if credentials is not None:
            shutil.rmtree(credentials, ignore_errors=True)
        await self.client.call(self.client.close)


class _View:
    """The view :meth:`LibvirtProvider.changes` hands out: a backup job while the domain
    runs, its files' bitmaps once it is off (the cutover's last delta)."""

    def __init__(self, provider: LibvirtProvider, vm: Vm, since: str | None) -> None:
        self._provider = provider
        self._vm = vm
        self._since = since
        self._inner: ChangedDisks | None = None

    @property
    def _open(self) -> ChangedDisks:
        if self._inner is None:
            raise ProviderError(f"VM {self._vm.name}: the view is not open (use 'async with')")
        return self._inner

    @property
    def checkpoint(self) -> str:
        return self._open.checkpoint

    @property
    def since(self) -> str | None:
        return self._since

    async def __aenter__(self) -> Self:
        running = await self._provider._running(self._vm)()
        inner = self._provider._view(self._vm, self._since, running)
        await inner.__aenter__()
        self._inner = inner
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        inner, self._inner = self._inner, None
        if inner is not None:
            await inner.__aexit__(exc_type, exc, tb)

    def size(self, disk_id: str) -> int:
        return self._open.size(disk_id)

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        return await self._open.changed_extents(disk_id)

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        return await self._open.read(disk_id, offset, length)

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        return self._open.nbd_export(disk_id)

    def tls_export(self, disk_id: str) -> NbdTls | None:
        inner = self._open
        return inner.tls_export(disk_id) if isinstance(inner, TlsNbdExport) else None
