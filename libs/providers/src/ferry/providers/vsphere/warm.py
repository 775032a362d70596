"""Warm migration from vSphere: snapshots as checkpoints, CBT change ids as deltas.

The seam's :class:`ferry.providers.base.WarmSource` maps onto vSphere as Forklift
does it:

- a checkpoint is a Ferry snapshot (``ferry-cbt-<hex>``, quiesced when VMware Tools
  runs), taken when a view is entered; each of its disks carries a CBT change id
  (``snapshot.config.hardware.device[].backing.changeId``);
- a round's snapshot is named for the round: ``<hex>`` is a digest of the round's id
  (migration, VM, round) and ``since``, so a round killed mid-way (kill -9: the
  snapshot stays, nothing else survives) and run again finds its snapshot by name
  and reuses it: the same checkpoint, the same change ids, the same changed areas,
  so the copy resumes inside the round. Another round, or the same round from
  another ``since``, has another name; a snapshot the VM no longer has is taken
  anew. Nothing extra is left: the reused snapshot is the round's checkpoint, and
  the rounds' clean-up removes every checkpoint it does not keep;
- the full view (``since`` None) lists each disk's allocated areas
  (``QueryChangedDiskAreas`` with ``*`` against the new snapshot); a delta view lists
  the areas changed between the ``since`` snapshot's change id and the new snapshot;
- the bytes are read over the datastore HTTP path, as the cold copy reads them
  (:class:`~ferry.providers.vsphere.disks.DatastoreDiskReader`, served to the data
  mover through ``nbdkit curl``; a transfer pod, which cannot reach that socket, is
  given the same file over HTTPS with the session's cookie: :meth:`SnapshotView.range_export`);
- removing a checkpoint removes its snapshot (consolidating the disks); every Ferry
  snapshot on the VM is a checkpoint to find and remove after a crash, since the
  snapshot tree is the record.

CBT must already be on: turning it on needs a stun of the VM (a snapshot cycle) on
real hosts, so the validator reports it off as a preflight reason for warm plans
instead of changing the source behind the user's back.

Reading "the view" reads the disk's flat extent: on a real host, while a snapshot
exists the flat extent is frozen at the oldest snapshot and writes go to delta
files, so a round's reads are consistent only from the first snapshot of a chain.
Against vcsim the flat file is the live disk (see the simulator's README).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from types import TracebackType
from typing import Any, Self

from pyVmomi import vim

from ferry.proto.inventory import Extent, PowerState, Vm
from ferry.providers.base import CheckpointGone, DiskNotFound, HttpRange, ProviderError
from ferry.providers.vsphere import changes, client, power, snapshots
from ferry.providers.vsphere.client import Session
from ferry.providers.vsphere.disks import DatastoreDiskReader, DatastoreFile, SessionExpired

log = logging.getLogger(__name__)

CHECKPOINT_TAG = "cbt-"
CHECKPOINT_PREFIX = snapshots.FERRY_PREFIX + CHECKPOINT_TAG


def checkpoint_name(round_id: str, since: str | None) -> str:
    """The snapshot name of ``round_id``'s view from ``since``; random without a round."""
    if not round_id:
        return CHECKPOINT_PREFIX + secrets.token_hex(6)
    digest = hashlib.sha256(f"{round_id}\n{since or ''}".encode()).hexdigest()
    return CHECKPOINT_PREFIX + digest[:16]


def find(vm_ref: Any, name: str) -> Any | None:
    """The snapshot node named ``name`` on the VM, if it still exists."""
    return next((n for n in snapshots.walk(snapshots.tree(vm_ref)) if n.name == name), None)


def checkpoints(vm_ref: Any) -> list[str]:
    """Blocking: Ferry's snapshots on the VM, oldest first (by the tree's creation id)."""
    nodes = [
        n
        for n in snapshots.walk(snapshots.tree(vm_ref))
        if n.name.startswith(snapshots.FERRY_PREFIX)
    ]
    return [n.name for n in sorted(nodes, key=lambda n: n.id)]


def remove(vm_ref: Any, name: str) -> None:
    """Blocking: remove the snapshot ``name`` (and only it); gone already is no error."""
    node = find(vm_ref, name)
    if node is None:
        return
    client.wait_for(
        node.snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True),
        f"removing snapshot {name!r} of {vm_ref._moId}",
    )


def change_ids(snapshot_ref: Any) -> dict[str, str]:
    """Disk key → change id, as the snapshot's configuration records it."""
    found: dict[str, str] = {}
    for device in snapshot_ref.config.hardware.device:
        if isinstance(device, vim.vm.device.VirtualDisk):
            found[str(device.key)] = str(getattr(device.backing, "changeId", "") or "")
    return found


class SnapshotView:
    """A :class:`ferry.providers.base.ChangedDisks` over the round's Ferry snapshot:
    the one a killed attempt of the round took, else a new one."""

    def __init__(
        self, session: Session, ref: Any, vm: Vm, since: str | None, round_id: str = ""
    ) -> None:
        self._session = session
        self._ref = ref  # (si) -> the VM's managed object, checked to exist
        self._vm = vm
        self._since = since
        self._round_id = round_id
        self._name = checkpoint_name(round_id, since)
        self._snapshot: Any = None
        self._reused = False
        self._since_ids: dict[str, str] = {}
        self._readers: dict[str, DatastoreDiskReader] = {}

    @property
    def checkpoint(self) -> str:
        return self._name

    @property
    def since(self) -> str | None:
        return self._since

    @property
    def reused(self) -> bool:
        """Whether the view took over the snapshot a killed attempt of its round took."""
        return self._reused

    async def __aenter__(self) -> Self:
        await self._session.call(self._take)
        try:
            for disk in self._vm.disks:
                if disk.rdm:
                    raise ProviderError(
                        f"disk {disk.name!r} of {self._vm.id} is a raw device mapping"
                    )
                file = DatastoreFile.of_backing(self._vm.datacenter, disk.backing)
                reader = DatastoreDiskReader(
                    self._session, file, disk.capacity, f"{self._vm.id}:{disk.id}"
                )
                self._readers[disk.id] = reader
                await reader.__aenter__()
        except BaseException:
            await self._close_readers()
            # Never handed out as a checkpoint, so nobody else would remove it. A reused
            # one stays: the next attempt takes it over, the rounds' clean-up removes it.
            if not self._reused:
                with contextlib.suppress(Exception):
                    await self._session.call(lambda si: remove(self._ref(si), self._name))
            raise
        return self

    def _take(self, si: Any) -> None:
        vm_ref = self._ref(si)
        if self._since is not None:
            node = find(vm_ref, self._since)
            if node is None:
                raise CheckpointGone(self._vm.id, self._since)
            self._since_ids = change_ids(node.snapshot)
            missing = [d.id for d in self._vm.disks if not self._since_ids.get(d.id)]
            if missing:
                raise CheckpointGone(self._vm.id, self._since)
        if self._round_id:
            left = find(vm_ref, self._name)
            if left is not None:
                # A killed attempt's: its change ids (and what changed up to them) are
                # those that attempt copied from, so its progress counts again.
                log.info(
                    "round %s of %s takes over snapshot %s from a killed attempt",
                    self._round_id,
                    self._vm.id,
                    self._name,
                )
                self._snapshot, self._reused = left.snapshot, True
                return
        quiesce = snapshots.tools_running(vm_ref) and power.state(vm_ref) is PowerState.ON
        tag = self._name.removeprefix(snapshots.FERRY_PREFIX)
        note = f"warm round {self._round_id}" if self._round_id else "warm round"
        description = f"{snapshots.DESCRIPTION} ({note})"
        self._snapshot = snapshots.create(vm_ref, tag, quiesce=quiesce, description=description)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The snapshot stays: it is the checkpoint the next round counts from.
        try:
            # A round that failed while the session ended is retried (SessionExpired);
            # the next attempt logs in anew and counts from the previous checkpoint.
            if isinstance(exc, Exception) and not isinstance(exc, SessionExpired):
                for reader in self._readers.values():
                    if await reader.session_ended():
                        raise SessionExpired(
                            f"VM {self._vm.id}: the vSphere session ended during the round "
                            f"(datastore HTTP path answered 401); retried with a new login"
                        ) from exc
        finally:
            await self._close_readers()

    async def _close_readers(self) -> None:
        readers, self._readers = list(self._readers.values()), {}
        for reader in readers:
            with contextlib.suppress(Exception):
                await reader.close()

    def _reader(self, disk_id: str) -> DatastoreDiskReader:
        reader = self._readers.get(disk_id)
        if reader is None:
            raise DiskNotFound(self._vm.id, disk_id)
        return reader

    def size(self, disk_id: str) -> int:
        return self._reader(disk_id).size

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        size = self.size(disk_id)
        since = changes.ALL if self._since is None else self._since_ids[disk_id]
        snapshot = self._snapshot

        def query(si: Any) -> list[Extent]:
            return changes.changed_areas(self._ref(si), int(disk_id), size, since, snapshot)

        return await self._session.call(query)

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        return await self._reader(disk_id).read(offset, length)

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        source = self._reader(disk_id).qemu_source()
        return str(source.options["file"]["server"]["path"]), ""

    def range_export(self, disk_id: str) -> HttpRange:
        """The base extent over HTTPS for a pod (the snapshot froze it, as for nbdkit)."""
        return self._reader(disk_id).http_range()
