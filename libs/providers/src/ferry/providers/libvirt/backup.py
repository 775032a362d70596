"""Pull-mode backups: a running domain's disks exported over NBD, whole or changed.

One libvirt backup job is a point-in-time view of the domain's disks served by
QEMU's NBD server, on a Unix socket here or over TCP with TLS on a remote libvirt
host (:mod:`.exports` says how each is reached); taken with a checkpoint (a persistent dirty
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
label), because QEMU creates the socket and the scratch files. A job on TCP is
recognised by its export names (``ferry-<target>``); its job directory here holds
only the sockets of the local relays, and its scratch files sit next to the disks
on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import tempfile
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from xml.sax.saxutils import escape, quoteattr

import libvirt

from ferry.proto.inventory import Extent, Vm
from ferry.providers.base import CheckpointGone, NbdTls, ProviderError, VmNotFound
from ferry.providers.libvirt import exports, inventory
from ferry.providers.libvirt.client import Client, describe
from ferry.providers.libvirt.exports import Tls, qemu_img_map
from ferry.providers.libvirt.jobs import (
    CHECKPOINT_PREFIX,
    WORKDIR_PREFIX,
    abort_leftover,
    end_job,
    newest_after,
    ours_on_tcp,
)
from ferry.providers.nbd import AsyncNbdClient, NbdClient, NbdError, NbdServer

PORT_TRIES = 8  # ports of the range tried before a job on TCP gives up


def new_checkpoint_name() -> str:
    return f"{CHECKPOINT_PREFIX}{secrets.token_hex(6)}"


def unix_server(socket: str) -> str:
    return f"<server transport='unix' socket={quoteattr(socket)}/>"


def backup_xml(
    server: str,
    scratch: dict[str, Path],
    all_targets: list[str],
    since: str | None,
    names: dict[str, str] | None = None,
) -> str:
    """The job of the disks in ``scratch`` (target → its scratch file), served at
    ``server``; ``names``: the exports' names (libvirt's default: the target)."""
    disks = []
    for target in all_targets:
        if target in scratch:
            name = f" exportname={quoteattr(names[target])}" if names else ""
            disks.append(
                f"<disk name={quoteattr(target)} backup='yes' type='file'{name}>"
                f"<scratch file={quoteattr(str(scratch[target]))}/></disk>"
            )
        else:
            disks.append(f"<disk name={quoteattr(target)} backup='no'/>")
    incremental = f"<incremental>{escape(since)}</incremental>" if since else ""
    return (
        f"<domainbackup mode='pull'>{incremental}{server}"
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
    return Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=own_workdir(workdir)))


def own_workdir(workdir: Path) -> Path:
    """``workdir``, made if missing, once it is this process's and closed to writers."""
    workdir.mkdir(mode=0o711, parents=True, exist_ok=True)
    info = workdir.lstat()
    if not workdir.is_dir() or workdir.is_symlink() or info.st_uid != os.geteuid():
        raise ProviderError(f"work directory {workdir} is not a directory owned by this process")
    if info.st_mode & 0o022:
        raise ProviderError(
            f"work directory {workdir} is writable by others (mode {info.st_mode & 0o777:o})"
        )
    return workdir


def _qemu_owner(dom: libvirt.virDomain) -> tuple[int, int] | None:
    root = inventory.parse(dom.XMLDesc(0))
    for label in root.findall("seclabel"):
        text = (label.findtext("label") or "").strip()
        if label.get("model") == "dac" and ":" in text:
            uid, gid = text.split(":", 1)
            return int(uid.lstrip("+")), int(gid.lstrip("+"))
    return None


class Backup:
    """A :class:`ferry.providers.base.ChangedDisks` over one pull-mode backup job.

    ``checkpoint=False`` takes a plain full view (a cold read of a running domain)
    without starting to track anything. ``remote``: the host's TLS transport and the
    folder of Ferry's credentials (:mod:`.exports`); None serves on a Unix socket here.
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
        remote: tuple[Tls, Path] | None = None,
    ) -> None:
        self._client = client
        self._vm = vm
        self._since = since
        self._workdir = workdir
        self._targets = targets if targets is not None else [d.id for d in vm.disks]
        self._checkpoint = new_checkpoint_name() if checkpoint else ""
        self._remote = remote
        self._port = 0  # the job's TCP port on the host (remote only)
        self._dir: Path | None = None
        self._exports: dict[str, str] = {}  # disk id → NBD export name
        self._bitmaps: dict[str, str] = {}  # disk id → the export's dirty-bitmap name
        self._relays: dict[str, NbdServer] = {}  # disk id → its local relay (remote only)
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
            if self._remote is not None:
                await settle(self._start_relays(self._remote[1]))
        except BaseException:
            await settle(self.close())
            raise
        return self

    async def _start_relays(self, credentials: Path) -> None:
        assert self._remote is not None
        host = self._remote[0].host
        for disk_id, export in self._exports.items():
            try:
                relay = await exports.relay(host, self._port, export, credentials)
            except NbdError as exc:
                raise ProviderError(
                    f"VM {self._vm.name}: its backup job on {host}:{self._port} could not be "
                    f"read over TLS ({exc}); the host's backup CA must have signed "
                    "backupClientCert, and backupCACert the host's certificate"
                ) from None
            self._relays[disk_id] = relay

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
        disks = inventory.disks(inventory.parse(dom.XMLDesc(0)))[0]
        all_targets = [d.target for d in disks]
        missing = [t for t in self._targets if t not in all_targets]
        if missing:
            self._remove_dir()
            raise ProviderError(f"VM {self._vm.name}: disk(s) {', '.join(missing)} are gone")
        cxml = (
            checkpoint_xml(self._checkpoint, self._targets, all_targets)
            if self._checkpoint
            else None
        )
        if self._remote is None:
            owner = _qemu_owner(dom)
            if owner is not None:
                os.chown(self._dir, *owner)
            scratch = {t: self._dir / f"scratch-{t}.qcow2" for t in self._targets}
            bxml = backup_xml(unix_server(self.socket), scratch, all_targets, self._since)
            self._start(dom, bxml, cxml)
        else:
            self._start_on_tcp(dom, {d.target: d for d in disks}, all_targets, cxml)
        try:
            for node in inventory.parse(dom.backupGetXMLDesc(0)).findall("disks/disk"):
                if node.get("backup") == "yes":
                    name = node.get("name", "")
                    self._exports[name] = node.get("exportname") or name
                    self._bitmaps[name] = node.get("exportbitmap", "")
        except BaseException:
            self._end()  # begun but not described: never leave the job behind
            raise

    def _start(self, dom: libvirt.virDomain, bxml: str, cxml: str | None) -> None:
        try:
            dom.backupBegin(bxml, cxml, 0)
        except libvirt.libvirtError as exc:
            self._remove_dir()
            raise ProviderError(
                f"VM {self._vm.name}: backup could not start: {describe(exc)}"
            ) from None

    def _start_on_tcp(
        self,
        dom: libvirt.virDomain,
        disks: dict[str, inventory.DiskXml],
        all_targets: list[str],
        cxml: str | None,
    ) -> None:
        """The job on the host's TCP port: a free one of the range, tried at random so
        that jobs of other VMs rarely meet; scratch files next to the disks."""
        assert self._remote is not None and self._dir is not None
        tls = self._remote[0]
        blocks = [t for t in self._targets if disks[t].kind != "file"]
        if blocks:
            self._remove_dir()
            raise ProviderError(
                f"VM {self._vm.name}: disk(s) {', '.join(blocks)} are block devices on "
                f"{tls.host}; a remote backup keeps its scratch files next to file disks only"
            )
        scratch = {t: Path(f"{disks[t].path}.{self._dir.name}.scratch") for t in self._targets}
        names = {t: exports.export_name(t) for t in self._targets}
        ports = random.sample(list(tls.ports), min(PORT_TRIES, len(tls.ports)))
        for port in ports:
            server = exports.server_xml(tls, port)
            bxml = backup_xml(server, scratch, all_targets, self._since, names)
            try:
                dom.backupBegin(bxml, cxml, 0)
            except libvirt.libvirtError as exc:
                reason = describe(exc)
                if "in use" in reason.lower() and port != ports[-1]:
                    continue  # another job (or program) listens there: the next port
                self._remove_dir()
                raise ProviderError(
                    f"VM {self._vm.name}: backup could not start on {tls.host}:{port}: {reason}"
                ) from None
            self._port = port
            return

    def _adopt(self, dom: libvirt.virDomain) -> bool:
        """Take over the job a killed attempt of this same round left running.

        Same round: an incremental from the same checkpoint, over the same disks,
        serving from a job directory in this work directory, and the checkpoint it
        took (:func:`newest_after` ``since``) still there. The view then shows the same
        picture, so the copy resumes where that attempt's durable progress ends.
        """
        if not self._since or not self._checkpoint:
            return False
        try:
            desc = inventory.parse(dom.backupGetXMLDesc(0))
        except libvirt.libvirtError:
            return False  # no job left
        server = desc.find("server")
        if (desc.findtext("incremental") or "").strip() != self._since or server is None:
            return False
        socket = Path(server.get("socket", ""))
        if self._remote is not None:
            if not ours_on_tcp(desc) or not server.get("port", "").isdigit():
                return False
        elif (
            not socket.parent.name.startswith(WORKDIR_PREFIX)
            or socket.parent.parent != self._workdir
        ):
            return False
        exports = {
            node.get("name", ""): (node.get("exportname") or node.get("name", ""), node)
            for node in desc.findall("disks/disk")
            if node.get("backup") == "yes"
        }
        taken = newest_after(dom, self._since)
        if sorted(exports) != sorted(self._targets) or taken is None:
            return False
        if self._remote is not None:  # a new directory here for this view's relays
            self._dir, self._port = job_dir(self._workdir), int(server.get("port", ""))
        else:
            self._dir = socket.parent
        self._checkpoint = taken
        for name, (export, node) in exports.items():
            self._exports[name] = str(export)
            self._bitmaps[name] = node.get("exportbitmap", "")
        return True

    async def close(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            with contextlib.suppress(NbdError, OSError):
                await reader.close()
        relays, self._relays = self._relays, {}
        for relay in relays.values():
            await relay.stop()
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
        """(Unix socket, export name) of the disk here: QEMU's, or its local relay's."""
        if disk_id not in self._exports:
            raise ProviderError(f"VM {self._vm.name}: disk {disk_id!r} is not in this backup")
        if self._remote is not None:
            if disk_id not in self._relays:
                raise ProviderError(f"VM {self._vm.name}: disk {disk_id!r} has no relay yet")
            return str(self._relays[disk_id].socket), ""
        return self.socket, self._exports[disk_id]

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        return self._export(disk_id)

    def tls_export(self, disk_id: str) -> NbdTls | None:
        """The disk's export on the host over TLS, for a reader off this host (a pod)."""
        self._export(disk_id)
        if self._remote is None:
            return None
        tls = self._remote[0]
        return NbdTls(host=tls.host, port=self._port, export=self._exports[disk_id],
                      ca=tls.ca, cert=tls.cert, key=tls.key)  # fmt: skip

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        socket, export = self._export(disk_id)
        node: dict[str, object] = {
            "driver": "nbd",
            "export": export,
            "server": {"type": "unix", "path": socket},
        }
        objects: list[str] = []
        if self._remote is not None:  # the host's own export: a relay drops the bitmap
            tls, credentials = self._remote
            node = exports.map_node(tls.host, self._port, self._exports[disk_id])
            objects = [exports.tls_object(credentials)]
        if self._since:
            if not self._bitmaps.get(disk_id):
                raise ProviderError(f"VM {self._vm.name}: disk {disk_id} exports no dirty bitmap")
            node["x-dirty-bitmap"] = f"qemu:dirty-bitmap:{self._bitmaps[disk_id]}"
        rows = await qemu_img_map("json:" + json.dumps(node), objects)
        return exports.extents(rows, dirty=bool(self._since))

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
