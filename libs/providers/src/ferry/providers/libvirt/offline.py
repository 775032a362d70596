"""Changes of a shut-off domain: its qcow2 files' dirty bitmaps exported by qemu-nbd.

A libvirt checkpoint is a persistent bitmap in every disk's qcow2 file, and it
keeps counting writes until the domain stops. After the cutover's power-off no
backup job can run (that needs a running QEMU), so the last delta is read the way
oVirt reads a stopped VM's: ``qemu-nbd --bitmap`` over the file, read-only,
exporting ``qemu:dirty-bitmap:<checkpoint>`` beside the data. Nothing can change
while the domain is off, so this view takes no new checkpoint: its
:attr:`checkpoint` is the one it reads from.

libvirt (9.0) refuses to delete a checkpoint of an inactive domain, so
:func:`remove_bitmaps` drops the bitmap from each file with ``qemu-img bitmap``
after libvirt forgot the checkpoint's metadata. Only a local URI's files are ours
to open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from ferry.proto.inventory import Extent, Vm
from ferry.providers import children, lifetime
from ferry.providers.base import CheckpointGone, ProviderError
from ferry.providers.libvirt import inventory
from ferry.providers.libvirt.backup import job_dir, settle
from ferry.providers.libvirt.client import Client
from ferry.providers.libvirt.exports import merged, qemu_img_map
from ferry.providers.nbd import AsyncNbdClient, NbdClient, NbdError

START_TIMEOUT = 30.0


def bitmaps(path: str) -> list[str]:
    """The persistent bitmaps of a qcow2 file (blocking)."""
    done = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", "-f", "qcow2", path],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ProviderError(f"qemu-img info {path}: {done.stderr.strip()[-300:]}")
    data = json.loads(done.stdout).get("format-specific", {}).get("data", {})
    return [str(b.get("name", "")) for b in data.get("bitmaps", [])]


def remove_bitmaps(paths: list[str], name: str) -> None:
    """Drop bitmap ``name`` from every file that has it (blocking; domain off)."""
    for path in paths:
        if name in bitmaps(path):
            subprocess.run(
                ["qemu-img", "bitmap", "--remove", "-f", "qcow2", path, name],
                capture_output=True,
                check=True,
            )


class OfflineView:
    """A :class:`ferry.providers.base.ChangedDisks` of a shut-off domain on this host."""

    def __init__(self, client: Client, vm: Vm, since: str | None, workdir: Path) -> None:
        self._client = client
        self._vm = vm
        self._since = since
        self._workdir = workdir
        self._dir: Path | None = None
        self._servers: dict[str, asyncio.subprocess.Process] = {}
        self._readers: dict[str, AsyncNbdClient] = {}
        self._sizes = {d.id: d.capacity for d in vm.disks}
        self._lock = asyncio.Lock()

    @property
    def checkpoint(self) -> str:
        return self._since or ""

    @property
    def since(self) -> str | None:
        return self._since

    async def __aenter__(self) -> Self:
        xml = await self._client.call(self._inactive_xml)
        files = {d.target: d for d in inventory.disks(inventory.parse(xml))[0]}
        self._dir = job_dir(self._workdir)
        try:
            for disk in self._vm.disks:
                found = files.get(disk.id)
                if found is None:
                    raise ProviderError(f"VM {self._vm.name}: disk {disk.id} is gone")
                if self._since and self._since not in await asyncio.to_thread(bitmaps, found.path):
                    raise CheckpointGone(self._vm.name, self._since)
                await self._serve(disk.id, found.path, found.format)
        except BaseException:
            await settle(self.close())
            raise
        return self

    def _inactive_xml(self) -> str:
        dom = self._client.domain(self._vm.id)
        if dom.isActive():
            raise ProviderError(f"VM {self._vm.name} runs: its changes come from a backup job")
        return str(dom.XMLDesc(0))

    async def _serve(self, disk_id: str, path: str, fmt: str) -> None:
        assert self._dir is not None
        socket = self._dir / f"{disk_id}.sock"
        bitmap = ["--bitmap", self._since] if self._since else []
        proc = await asyncio.create_subprocess_exec(
            "qemu-nbd", "--read-only", "--persistent", "--shared=4", "-f", fmt,
            *bitmap, "-x", disk_id, "-k", str(socket), path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=lifetime.die_with_parent(),
        )  # fmt: skip
        self._servers[disk_id] = proc
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not socket.exists():
            if proc.returncode is not None or loop.time() > deadline:
                err = (
                    await proc.stderr.read() if proc.stderr and proc.returncode is not None else b""
                )
                raise ProviderError(
                    f"VM {self._vm.name}: qemu-nbd for {disk_id} did not start: "
                    f"{err.decode(errors='replace')[-300:]}"
                )
            await asyncio.sleep(0.02)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await settle(self.close())

    async def close(self) -> None:
        readers, self._readers = self._readers, {}
        for reader in readers.values():
            with contextlib.suppress(NbdError, OSError):
                await reader.close()
        servers, self._servers = self._servers, {}
        for proc in servers.values():
            await children.stop(proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def size(self, disk_id: str) -> int:
        self.nbd_export(disk_id)
        return self._sizes[disk_id]

    def nbd_export(self, disk_id: str) -> tuple[str, str]:
        if self._dir is None or disk_id not in self._servers:
            raise ProviderError(f"VM {self._vm.name}: disk {disk_id!r} is not in this view")
        return str(self._dir / f"{disk_id}.sock"), disk_id

    async def changed_extents(self, disk_id: str) -> list[Extent]:
        socket, export = self.nbd_export(disk_id)
        node: dict[str, object] = {
            "driver": "nbd",
            "export": export,
            "server": {"type": "unix", "path": socket},
        }
        if self._since:
            node["x-dirty-bitmap"] = f"qemu:dirty-bitmap:{self._since}"
        rows = await qemu_img_map("json:" + json.dumps(node))
        if self._since:
            picked = (r for r in rows if not r.get("data"))
        else:
            picked = (r for r in rows if r.get("data") and not r.get("zero"))
        return merged(Extent(int(str(r["start"])), int(str(r["length"]))) for r in picked)

    async def read(self, disk_id: str, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size(disk_id) - offset))
        if length == 0:
            return b""
        socket, export = self.nbd_export(disk_id)
        async with self._lock:
            if disk_id not in self._readers:
                client = await asyncio.to_thread(NbdClient, socket, export)
                self._readers[disk_id] = AsyncNbdClient(client)
            reader = self._readers[disk_id]
        return await reader.read(offset, length)
