"""Pull-mode backups: a running domain's disks exported over NBD, whole or changed.

One libvirt backup job is a point-in-time view of the domain's disks served by
QEMU's NBD server on a Unix socket; taken with a checkpoint (a persistent dirty
bitmap per disk), it is also where the next round's changes are counted from.
``qemu:dirty-bitmap:`` metadata on the export tells which 64 KiB blocks changed
since the incremental's checkpoint; ``qemu-img map`` reads it (the nbd driver's
``x-dirty-bitmap`` shows a dirty block as ``"data": false``), the same way
ovirt-imageio does.

A domain has at most one backup job. Ferry's jobs serve from a directory named
``ferry-backup-*`` under the provider's work directory, so a job that a killed
service left behind is recognised by its socket path and aborted before the next
one starts (:func:`abort_leftover`), and every checkpoint Ferry makes is named
``ferry-…``. One exception: a job left by a killed attempt of the same round (an
incremental from the same checkpoint) is taken over, not aborted, so the round
reads the same picture again and its copy resumes inside the round. The
directory is handed to the QEMU process's own user (from the domain's DAC
label), because QEMU creates the socket and the scratch files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from xml.sax.saxutils import escape, quoteattr

import libvirt

from ferry.proto.inventory import Extent, Vm
from ferry.providers.base import CheckpointGone, ProviderError, VmNotFound
from ferry.providers.libvirt import inventory
from ferry.providers.libvirt.client import Client, describe
from ferry.providers.nbd import AsyncNbdClient, NbdClient, NbdError

CHECKPOINT_PREFIX = "ferry-"
WORKDIR_PREFIX = "ferry-backup-"


def new_checkpoint_name() -> str:
    return f"{CHECKPOINT_PREFIX}{secrets.token_hex(6)}"


def backup_xml(
    socket: str, scratch: Path, targets: list[str], all_targets: list[str], since: str | None
) -> str:
    disks = []
    for target in all_targets:
        if target in targets:
            path = quoteattr(str(scratch / f"scratch-{target}.qcow2"))
            disks.append(
                f"<disk name={quoteattr(target)} backup='yes' type='file'>"
                f"<scratch file={path}/></disk>"
            )
        else:
            disks.append(f"<disk name={quoteattr(target)} backup='no'/>")
    incremental = f"<incremental>{escape(since)}</incremental>" if since else ""
    return (
        f"<domainbackup mode='pull'>{incremental}"
        f"<server transport='unix' socket={quoteattr(socket)}/>"
        f"<disks>{''.join(disks)}</disks></domainbackup>"
    )


def checkpoint_xml(name: str, targets: list[str], all_targets: list[str]) -> str:
    disks = "".join(
        f"<disk name={quoteattr(t)} checkpoint={'bitmap' if t in targets else 'no'!r}/>"
        for t in all_targets
    )
    return f"<domaincheckpoint><name>{escape(name)}</name><disks>{disks}</disks></domaincheckpoint>"


async def settle(closing: Coroutine[Any, Any, None]) -> None:
    """Run a view's start or clean-up to its end, even when the task is canceled meanwhile.

    ``asyncio.shield`` alone lets a second cancel return at once while the clean-up
    goes on in the background: the handler would then report a canceled round while
    its backup job still exports the guest's disks. The cancel is re-raised after.
    """
    task = asyncio.ensure_future(closing)
    canceled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            canceled = True
    task.result()
    if canceled:
        raise asyncio.CancelledError


def job_dir(workdir: Path) -> Path:
    """A fresh directory for one job's sockets and scratch files.

    The work directory must be ours: whoever owns it could swap a job's directory
    for one of their own and read the guest's disks through the socket. QEMU's user
    must pass through it (0711) to reach its own directory inside.
    """
    workdir.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = workdir.lstat()
    if not workdir.is_dir() or workdir.is_symlink() or info.st_uid != os.geteuid():
        raise ProviderError(f"work directory {workdir} is not a directory owned by this process")
    if info.st_mode & 0o022:
        raise ProviderError(
            f"work directory {workdir} is writable by others (mode {info.st_mode & 0o777:o})"
        )
    return Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=workdir))


def _qemu_owner(dom: libvirt.virDomain) -> tuple[int, int] | None:
    root = inventory.parse(dom.XMLDesc(0))
    for label in root.findall("seclabel"):
        text = (label.findtext("label") or "").strip()
        if label.get("model") == "dac" and ":" in text:
            uid, gid = text.split(":", 1)
            return int(uid.lstrip("+")), int(gid.lstrip("+"))
    return None


def abort_leftover(dom: libvirt.virDomain) -> bool:
    """Abort a backup job a crashed Ferry left on ``dom``; True when one was aborted."""
    try:
        desc = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError:
        return False  # no backup job
    server = inventory.parse(desc).find("server")
    socket = server.get("socket", "") if server is not None else ""
    if WORKDIR_PREFIX not in socket:
        return False  # someone else's backup: not ours to end
    end_job(dom)
    shutil.rmtree(Path(socket).parent, ignore_errors=True)
    return True


def _parent(checkpoint: libvirt.virDomainCheckpoint) -> str:
    try:
        return str(checkpoint.getParent(0).getName())
    except libvirt.libvirtError:
        return ""  # the first checkpoint has none


def _newest_after(dom: libvirt.virDomain, since: str) -> str | None:
    """The checkpoint the running job took: the only leaf, ``since`` among its ancestors.

    A job's checkpoint is made when the job begins (libvirt makes it a child of the
    newest checkpoint then), and a domain runs one job at a time, so it is the one
    Ferry checkpoint nothing descends from. More than one such leaf is ambiguous,
    and then nothing is taken over (the round starts afresh).
    """
    parents: dict[str, str] = {
        str(c.getName()): _parent(c)
        for c in dom.listAllCheckpoints(0)
        if c.getName().startswith(CHECKPOINT_PREFIX)
    }
    leaves = [name for name in parents if name not in parents.values()]
    if len(leaves) != 1 or leaves[0] == since:
        return None
    seen, node = set(), parents[leaves[0]]
    while node and node not in seen:
        if node == since:
            return leaves[0]
        seen.add(node)
        node = parents.get(node, "")
    return None


def end_job(dom: libvirt.virDomain, timeout: float = 30.0) -> None:
    """Abort the domain's backup job and wait until libvirt has forgotten it.

    The abort returns before the job's end is processed; a next backup started in
    that window would be refused as a second job.
    """
    with contextlib.suppress(libvirt.libvirtError):
        dom.abortJob()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            dom.backupGetXMLDesc(0)
        except libvirt.libvirtError:
            return
        time.sleep(0.05)
    raise ProviderError(f"the backup job of {dom.name()} did not end within {timeout:.0f}s")


class Backup:
    """A :class:`ferry.providers.base.ChangedDisks` over one pull-mode backup job.

    ``checkpoint=False`` takes a plain full view (a cold read of a running domain)
    without starting to track anything.
    """

    def __init__(
        self,
        client: Client,
        vm: Vm,
        since: str | None,
        workdir: Path,
        targets: list[str] | None = None,
        *,
        checkpoint: bool = True,
    ) -> None:
        self._client = client
        self._vm = vm
        self._since = since
        self._workdir = workdir
        self._targets = targets if targets is not None else [d.id for d in vm.disks]
        self._checkpoint = new_checkpoint_name() if checkpoint else ""
        self._dir: Path | None = None
        self._exports: dict[str, str] = {}  # disk id → NBD export name
        self._bitmaps: dict[str, str] = {}  # disk id → the export's dirty-bitmap name
        self._readers: dict[str, AsyncNbdClient] = {}
        self._sizes = {d.id: d.capacity for d in vm.disks}
        self._lock = asyncio.Lock()

    @property
    def checkpoint(self) -> str:
        return self._checkpoint

    @property
    def since(self) -> str | None:
        return self._since

    @property
    def socket(self) -> str:
        if self._dir is None:
            raise ProviderError(f"VM {self._vm.name}: the backup view is not open")
        return str(self._dir / "nbd.sock")

    async def __aenter__(self) -> Self:
        # libvirt works on a thread that a cancel does not stop: wait for it, then end
        # whatever it began, so a cancel while the job starts leaves no export behind.
        try:
            await settle(self._client.call(self._begin))
        except BaseException:
            await settle(self.close())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await settle(self.close())

    def _begin(self) -> None:
        dom = self._client.domain(self._vm.id)
        if not dom.isActive():
            raise ProviderError(f"VM {self._vm.name} is not running: no backup job can serve it")
        if self._adopt(dom):
            return
        abort_leftover(dom)
        if self._since and self._since not in [c.getName() for c in dom.listAllCheckpoints(0)]:
            raise CheckpointGone(self._vm.name, self._since)
        self._dir = job_dir(self._workdir)
        owner = _qemu_owner(dom)
        if owner is not None:
            os.chown(self._dir, *owner)
        all_targets = [d.target for d in inventory.disks(inventory.parse(dom.XMLDesc(0)))[0]]
        missing = [t for t in self._targets if t not in all_targets]
        if missing:
            self._remove_dir()
            raise ProviderError(f"VM {self._vm.name}: disk(s) {', '.join(missing)} are gone")
        bxml = backup_xml(self.socket, self._dir, self._targets, all_targets, self._since)
        cxml = (
            checkpoint_xml(self._checkpoint, self._targets, all_targets)
            if self._checkpoint
            else None
        )
        try:
            dom.backupBegin(bxml, cxml, 0)
        except libvirt.libvirtError as exc:
            self._remove_dir()
            raise ProviderError(
                f"VM {self._vm.name}: backup could not start: {describe(exc)}"
            ) from None
        try:
            for node in inventory.parse(dom.backupGetXMLDesc(0)).findall("disks/disk"):
                if node.get("backup") == "yes":
                    name = node.get("name", "")
                    self._exports[name] = node.get("exportname") or name
                    self._bitmaps[name] = node.get("exportbitmap", "")
        except BaseException:
            self._end()  # begun but not described: never leave the job behind
            raise

    def _adopt(self, dom: libvirt.virDomain) -> bool:
        """Take over the job a killed attempt of this same round left running.

        Same round: an incremental from the same checkpoint, over the same disks,
        serving from a job directory in this work directory, and the checkpoint it
        took (:func:`_newest_after` ``since``) still there. The view then shows the same
        picture, so the copy resumes where that attempt's durable progress ends.
        """
        if not self._since or not self._checkpoint:
            return False
        try:
            desc = inventory.parse(dom.backupGetXMLDesc(0))
        except libvirt.libvirtError:
            return False  # no job left
        server = desc.find("server")
        socket = Path(server.get("socket", "")) if server is not None else Path()
        if (
            (desc.findtext("incremental") or "").strip() != self._since
            or not socket.parent.name.startswith(WORKDIR_PREFIX)
            or socket.parent.parent != self._workdir
        ):
            return False
        exports = {
            node.get("name", ""): (node.get("exportname") or node.get("name", ""), node)
            for node in desc.findall("disks/disk")
            if node.get("backup") == "yes"
        }
        taken = _newest_after(dom, self._since)
        if sorted(exports) != sorted(self._targets) or taken is None:
            return False
        self._dir, self._checkpoint = socket.parent, taken
        for name, (export, node) in exports.items():
            self._exports[name] = str(export)
            self._bitmaps[name] = node.get("exportbitmap", "")
        return True

    async def close(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            with contextlib.suppress(NbdError, OSError):
                await reader.close()
        if self._dir is not None:
            await self._client.call(self._end)

    def _end(self) -> None:
        try:
            end_job(self._client.domain(self._vm.id))
        except VmNotFound:
            pass  # the domain is gone, and its job with it
        finally:
            self._remove_dir()

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def size(self, disk_id: str) -> int:
        self._export(disk_id)
        return self._sizes[disk_id]

    def _export(self, disk_id: str) -> tuple[str, str]:
        if disk_id not in self._exports:
            raise ProviderError(f"VM {self._vm.name}: disk {disk_id!r} is not in this backup")
        return self.socket, self._exports[disk_id]

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        return self._export(disk_id)

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        socket, export = self._export(disk_id)
        node: dict[str, object] = {
            "driver": "nbd",
            "export": export,
            "server": {"type": "unix", "path": socket},
        }
        if self._since:
            if not self._bitmaps.get(disk_id):
                raise ProviderError(f"VM {self._vm.name}: disk {disk_id} exports no dirty bitmap")
            node["x-dirty-bitmap"] = f"qemu:dirty-bitmap:{self._bitmaps[disk_id]}"
        rows = await qemu_img_map("json:" + json.dumps(node))
        # Through x-dirty-bitmap a dirty block reads as a hole ("data": false); without
        # it, "data" is allocation and "zero" a range that reads as zeros anyway.
        if self._since:
            picked = (r for r in rows if not r.get("data"))
        else:
            picked = (r for r in rows if r.get("data") and not r.get("zero"))
        return merged(Extent(_int(r["start"]), _int(r["length"])) for r in picked)

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size(disk_id) - offset))
        if length == 0:
            return b""
        reader = await self._reader(disk_id)
        return await reader.read(offset, length)

    async def _reader(self, disk_id: str) -> AsyncNbdClient:
        socket, export = self._export(disk_id)
        async with self._lock:
            if disk_id not in self._readers:
                self._readers[disk_id] = AsyncNbdClient(
                    await asyncio.to_thread(NbdClient, socket, export)
                )
            return self._readers[disk_id]


async def qemu_img_map(filename: str) -> list[dict[str, object]]:
    proc = await asyncio.create_subprocess_exec(
        "qemu-img",
        "map",
        "--output=json",
        filename,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise ProviderError(
            f"qemu-img map of the backup export failed: {err.decode(errors='replace')[-300:]}"
        )
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def _int(value: object) -> int:
    if not isinstance(value, int):
        raise ProviderError(f"qemu-img map gave {value!r} where a number belongs")
    return value


def merged(extents: Iterable[Extent]) -> list[Extent]:
    result: list[Extent] = []
    for extent in extents:
        if result and result[-1].offset + result[-1].length == extent.offset:
            last = result.pop()
            extent = Extent(last.offset, last.length + extent.length)
        result.append(extent)
    return result
