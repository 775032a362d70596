"""The engine stand-in's incremental backup API: ``/vms/{id}/backups`` and
``/vms/{id}/checkpoints``, answered as oVirt 4.5's engine answers them.

The rules come from the engine's ``StartVmBackupCommand``, ``StopVmBackupCommand`` and
``DeleteVmCheckpointCommand``: a backup needs the VM up or down and no other backup of
it in progress, its disks existing and not locked, and ``from_checkpoint_id`` (for an
incremental) among the VM's checkpoints, each refused with a 409 fault; it locks its
disks until it is finalized. Only qcow2 (``cow``) disks whose backup mode is
``incremental`` are in the new checkpoint; a backup of raw disks only takes none (no
``to_checkpoint_id``). The phases go ``initializing`` → ``starting`` → ``ready`` (or
``failed``); ``finalize`` is refused unless ``ready``, then ``finalizing`` →
``succeeded``. It does not end the backup's image transfers: whoever opened them
ends them. A new checkpoint's parent is the VM's newest; removing one re-parents its
child, and is refused while a backup of the VM is in progress.

The host's part is real (:mod:`.vdsm`): a libvirt pull-mode backup of the VM's running
domain (or, for a VM that is down, ``qemu-nbd`` over its files with their bitmaps),
whose NBD exports the engine's image transfers put behind tickets on the real imageio
daemon (``dirty`` for an incremental, so ``extents?context=dirty`` answers).

Not modelled: scratch disks on storage domains (libvirt's scratch files stand in),
checkpoint redefinition after a VM restart, ``require_consistency``, the backup
retention clean-up, a full backup of a disk inside an incremental (400), and raw
disks in an incremental (400).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from ovirtsdk4 import reader, types

from ferry.testing.ovirt import vdsm
from ferry.testing.ovirt.records import Backup, Checkpoint, Disk, VmRecord, follow
from ferry.testing.ovirt.replies import conflict, fault, not_found, xml

if TYPE_CHECKING:
    from ferry.testing.ovirt.engine import Engine


class Backups:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.backups: dict[str, Backup] = {}
        self.checkpoints: dict[str, Checkpoint] = {}  # in creation order
        self._tasks: set[asyncio.Task[None]] = set()

    def routes(self, r: web.UrlDispatcher, api: str) -> None:
        r.add_get(api + "/vms/{id}/backups", self._list)
        r.add_post(api + "/vms/{id}/backups", self._add)
        r.add_get(api + "/vms/{id}/backups/{bid}", self._get)
        r.add_get(api + "/vms/{id}/backups/{bid}/disks", self._backup_disks)
        r.add_post(api + "/vms/{id}/backups/{bid}/finalize", self._finalize)
        r.add_get(api + "/vms/{id}/checkpoints", self._checkpoints)
        r.add_get(api + "/vms/{id}/checkpoints/{cid}", self._checkpoint)
        r.add_delete(api + "/vms/{id}/checkpoints/{cid}", self._remove_checkpoint)

    def in_progress(self, vm: VmRecord) -> Backup | None:
        return next((b for b in self.backups.values() if b.vm is vm and not b.ended), None)

    def of_vm(self, vm: VmRecord) -> list[Checkpoint]:
        return [c for c in self.checkpoints.values() if c.vm_id == vm.id]

    def stop(self) -> None:
        """End every backup's exports (the engine stand-in is going away)."""
        for backup in self.backups.values():
            job, backup.job = backup.job, None
            if job is not None:
                vdsm.stop(job)

    # -- image transfers of a backup -----------------------------------------------------

    def export(self, backup_id: str, disk: Disk) -> tuple[str, bool]:
        """(NBD URL, dirty) a transfer of ``disk`` in backup ``backup_id`` reads."""
        backup = self.backups.get(backup_id)
        if backup is None:
            raise not_found(f"backup {backup_id}")
        if backup.phase != "ready" or backup.job is None:
            raise conflict(f"Cannot transfer Virtual Disk: backup {backup_id} is {backup.phase}.")
        url = backup.job.urls.get(disk.id)
        if url is None:
            raise conflict(f"Cannot transfer Virtual Disk: disk {disk.name} is not in the backup.")
        return url, backup.since is not None

    # -- backups -------------------------------------------------------------------------

    def _vm(self, request: web.Request) -> VmRecord:
        vm = self.engine.vms.get(request.match_info["id"])
        if vm is None:
            raise not_found(f"VM {request.match_info['id']}")
        follow(vm)
        return vm

    def _backup(self, request: web.Request) -> Backup:
        vm = self._vm(request)
        backup = self.backups.get(request.match_info["bid"])
        if backup is None or backup.vm is not vm:
            raise not_found(f"backup {request.match_info['bid']}")
        return backup

    async def _list(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        rows = [_backup_type(b) for b in self.backups.values() if b.vm is vm]
        return xml(rows, root="backups")

    async def _get(self, request: web.Request) -> web.Response:
        return xml(_backup_type(self._backup(request)))

    async def _backup_disks(self, request: web.Request) -> web.Response:
        backup = self._backup(request)
        return xml([types.Disk(id=d.id, name=d.name) for d in backup.disks], root="disks")

    async def _add(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        body = reader.Reader.read(await request.text())
        if not isinstance(body, types.Backup) or not body.disks:
            raise fault(400, "Bad Request", "a backup needs its disks")
        disks = self._disks(vm, [str(d.id) for d in body.disks])
        if vm.status not in ("up", "down"):
            raise conflict(f"Cannot backup VM. VM {vm.name} should be in Up or Down status.")
        if not vm.domain:
            raise fault(400, "Bad Request", "this stand-in backs up VMs that have a domain")
        if self.in_progress(vm) is not None:
            raise conflict(f"Cannot backup VM. Backup of VM {vm.name} is already in progress.")
        if any(d.locked for d in disks):
            raise conflict(f"Cannot backup VM. A disk of VM {vm.name} is locked.")
        since = body.from_checkpoint_id or None
        tracked = [d for d in disks if d.format == "cow" and d.backup == "incremental"]
        if since is not None:
            found = self.checkpoints.get(since)
            if found is None or found.vm_id != vm.id:
                raise conflict(f"Cannot backup VM. Checkpoint {since} does not exist.")
            if any(d.id not in found.disks for d in disks):
                raise fault(
                    400, "Bad Request", "this stand-in models no full disk in an incremental"
                )
        live = vm.status == "up"
        checkpoint = Checkpoint(vm.id, self._leaf(vm), [d.id for d in tracked])
        backup = Backup(
            vm, disks, since, checkpoint.id if tracked else None, live,
            description=body.description or "",
        )  # fmt: skip
        self.backups[backup.id] = backup
        for disk in disks:
            disk.locked = True
        task = asyncio.get_running_loop().create_task(self._start(backup, checkpoint))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return xml(_backup_type(backup), status=201)

    def _disks(self, vm: VmRecord, ids: list[str]) -> list[Disk]:
        mine = {d.id: d for d in vm.disks}
        missing = [i for i in ids if i not in mine]
        if missing:
            raise conflict(f"Cannot backup VM. Disk(s) {', '.join(missing)} do not exist.")
        return [mine[i] for i in ids]

    def _leaf(self, vm: VmRecord) -> str | None:
        chain = self.of_vm(vm)
        return chain[-1].id if chain else None

    async def _start(self, backup: Backup, checkpoint: Checkpoint) -> None:
        backup.phase = "starting"
        vm, tracked = backup.vm, [d for d in backup.disks if d.id in checkpoint.disks]
        try:
            if backup.live:
                job = await asyncio.to_thread(
                    vdsm.start_live,
                    vm.domain,
                    {d.id: d.target for d in backup.disks},
                    backup.since,
                    backup.checkpoint,
                    [d.target for d in tracked],
                )
            else:
                images = {
                    d.id: (d.image, "qcow2" if d.format == "cow" else "raw") for d in backup.disks
                }
                job = await asyncio.to_thread(
                    vdsm.start_cold, images, backup.since, backup.checkpoint
                )
        except Exception:
            backup.phase = "failed"
            self._unlock(backup)
            return
        backup.job = job
        if backup.checkpoint:
            self.checkpoints[checkpoint.id] = checkpoint
        backup.phase = "ready"

    def _unlock(self, backup: Backup) -> None:
        for disk in backup.disks:
            disk.locked = False

    async def _finalize(self, request: web.Request) -> web.Response:
        backup = self._backup(request)
        if backup.phase != "ready":
            raise conflict(f"Cannot stop VM Backup. The backup is {backup.phase}, not ready.")
        backup.phase = "finalizing"
        job, backup.job = backup.job, None

        async def end() -> None:
            if job is not None:
                await asyncio.to_thread(vdsm.stop, job)
            self._unlock(backup)
            backup.phase = "succeeded"

        task = asyncio.get_running_loop().create_task(end())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return xml(types.Action(status="complete"))

    # -- checkpoints ---------------------------------------------------------------------

    def _find_checkpoint(self, request: web.Request) -> tuple[VmRecord, Checkpoint]:
        vm = self._vm(request)
        found = self.checkpoints.get(request.match_info["cid"])
        if found is None or found.vm_id != vm.id:
            raise not_found(f"checkpoint {request.match_info['cid']}")
        return vm, found

    async def _checkpoints(self, request: web.Request) -> web.Response:
        vm = self._vm(request)
        return xml([_checkpoint_type(c) for c in self.of_vm(vm)], root="checkpoints")

    async def _checkpoint(self, request: web.Request) -> web.Response:
        return xml(_checkpoint_type(self._find_checkpoint(request)[1]))

    async def _remove_checkpoint(self, request: web.Request) -> web.Response:
        vm, found = self._find_checkpoint(request)
        if self.in_progress(vm) is not None:
            raise conflict(f"Cannot remove Checkpoint. VM {vm.name} is during a backup.")
        images = [d.image for d in vm.disks if d.id in found.disks]
        try:
            await asyncio.to_thread(vdsm.delete_checkpoint, vm.domain, found.id, images)
        except vdsm.VdsmError as exc:
            raise conflict(f"Cannot remove Checkpoint: {exc}") from None
        for child in self.checkpoints.values():
            if child.parent == found.id:
                child.parent = found.parent
        del self.checkpoints[found.id]
        return web.Response(status=200)


def _backup_type(b: Backup) -> types.Backup:
    shown = b.phase in ("ready", "finalizing", "succeeded")
    return types.Backup(
        id=b.id,
        phase=types.BackupPhase(b.phase),
        from_checkpoint_id=b.since,
        to_checkpoint_id=b.checkpoint if shown else None,
        # (its disks are a link, as the engine shows them: ``…/backups/{id}/disks``)
        description=b.description or None,
        creation_date=b.created,
        vm=types.Vm(id=b.vm.id),
        host=types.Host(id="standin-host"),
    )


def _checkpoint_type(c: Checkpoint) -> types.Checkpoint:
    return types.Checkpoint(
        id=c.id,
        parent_id=c.parent,
        creation_date=c.created,
        state=types.CheckpointState.CREATED,
        disks=[types.Disk(id=d) for d in c.disks],
        vm=types.Vm(id=c.vm_id),
    )
