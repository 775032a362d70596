"""Warm migration from oVirt: each round is one incremental backup through the engine.

:class:`BackupView` is a :class:`ferry.providers.base.ChangedDisks` over one backup of
all the VM's disks: full when ``since`` is None, else incremental from that checkpoint
(:class:`CheckpointGone` when the engine no longer has it). Its new checkpoint is the
backup's ``to_checkpoint_id``. Each disk is read through an image transfer of the
backup (:class:`OvirtDiskReader`, served by nbdkit on a private socket for the data
mover; a pod reads the transfer's URL itself, :meth:`BackupView.https_export`), and its
changes are imageio's extents of that transfer: for the full view the ranges that hold
data, for an incremental every range the backup's dirty bitmap marks, zero or not (a
range the guest zeroed must be zeroed on the target too).

Leaving the view (also on error or cancel) ends the transfers (finalized after a good
round, cancelled otherwise) and then finalizes the backup, waiting until the engine
says it ended: no backup, transfer or ticket is left. A backup a killed run left is
taken over when it is this very round's (the same checkpoint and disks: the copy then
resumes inside the round, the picture and its new checkpoint unchanged), and ended
before the next one starts otherwise (:func:`ferry.providers.ovirt.backups.take_over`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from ferry.proto.inventory import Extent, Vm
from ferry.providers.base import ProviderError
from ferry.providers.libvirt.backup import settle
from ferry.providers.ovirt import backups
from ferry.providers.ovirt.client import Client
from ferry.providers.ovirt.reader import OvirtDiskReader


class BackupView:
    def __init__(self, client: Client, vm: Vm, since: str | None) -> None:
        self._client = client
        self._vm = vm
        self._since = since
        self._backup: str | None = None
        self._checkpoint = ""
        self._readers: dict[str, OvirtDiskReader] = {}
        self._extents: dict[str, list[Extent]] = {}
        self._sizes = {d.id: d.capacity for d in vm.disks}

    @property
    def checkpoint(self) -> str:
        if not self._checkpoint:
            raise ProviderError(f"VM {self._vm.name}: the backup view is not open")
        return self._checkpoint

    @property
    def since(self) -> str | None:
        return self._since

    @property
    def backup_id(self) -> str | None:
        return self._backup

    async def __aenter__(self) -> Self:
        try:
            await settle(self._begin())
        except BaseException:
            await settle(self.close(ok=False))
            raise
        return self

    async def _begin(self) -> None:
        c, vm = self._client, self._vm
        disk_ids = [d.id for d in vm.disks]
        taken = await c.call(lambda: backups.take_over(c.system(), vm.id, disk_ids, self._since))
        if taken is None:
            taken = await c.call(
                lambda: backups.start(c.system(), vm.name, vm.id, disk_ids, self._since)
            )
        self._backup, self._checkpoint = taken
        for disk_id in disk_ids:
            reader = OvirtDiskReader(c, vm, disk_id, backup=self._backup)
            await reader.__aenter__()  # a reader that fails to open ends its own transfer
            self._readers[disk_id] = reader

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await settle(self.close(ok=exc_type is None))

    async def close(self, *, ok: bool) -> None:
        """End the transfers, then the backup; the first failure is raised after both
        (when nothing else is on its way out already)."""
        failure: BaseException | None = None
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            try:
                await reader.close(ok=ok)
            except Exception as exc:
                failure = failure or exc
        backup, self._backup = self._backup, None
        if backup is not None:
            c, vm_id = self._client, self._vm.id
            try:
                await c.call(lambda: backups.finalize(c.system(), vm_id, backup))
            except Exception as exc:
                failure = failure or exc
        if failure is not None and ok:
            raise failure

    def _reader(self, disk_id: str) -> OvirtDiskReader:
        reader = self._readers.get(disk_id)
        if reader is None:
            raise ProviderError(f"VM {self._vm.name}: disk {disk_id!r} is not in this backup")
        return reader

    def size(self, disk_id: str) -> int:
        self._reader(disk_id)
        return self._sizes[disk_id]

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        if disk_id not in self._extents:
            context = "zero" if self._since is None else "dirty"
            self._extents[disk_id] = await self._reader(disk_id).imageio_extents(context)
        return list(self._extents[disk_id])

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        return await self._reader(disk_id).read(offset, length)

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        return str(self._reader(disk_id).socket), ""

    def https_export(self, disk_id: str) -> tuple[str, str]:
        """The backup's image transfer of the disk, for a pod (:class:`HttpsExport`)."""
        source = self._reader(disk_id).qemu_source()
        return source.url, source.ca
