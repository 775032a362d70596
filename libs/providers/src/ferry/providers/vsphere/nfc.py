"""A powered-off vSphere VM's disks read through an NFC export lease (``ExportVm``).

The datastore path (:mod:`~ferry.providers.vsphere.disks`) reads a disk's flat
extent by range. Where there is none to read — vSAN and vVols datastores keep disks
as objects, not files — vCenter hands the disks out through an export lease instead,
the way ovftool and ``govc export.ovf`` read them: ``ExportVm`` returns an
``HttpNfcLease`` whose device URLs stream each disk as a streamOptimized VMDK. The
Provider setting ``diskTransfer: nfc`` reads cold disks this way (``datastore``, the
default, reads the flat extent).

A lease's stream has no ranges, so each disk is downloaded once, whole, into a
private folder (0700, the file 0600, under the reader's temporary directory) and
checked there (``qemu-img info``: a streamOptimized VMDK of the disk's size, nothing
it refers to); the copy then reads that file as it reads an OVA's disk, inflated in
process, with its checkpoints and verification, and the folder goes when the reader
closes. It costs each disk's compressed size on the reader's host for that long.

While a download runs the lease is kept alive (``HttpNfcLeaseProgress`` with the
percent done, every third of the lease's timeout and at least once a minute) and so
is the session. All readers of one VM share one lease: it is completed after the
last of them has its disk and aborted when any fails or is canceled, so Ferry never
leaves the VM locked by an export. A lease that expires or fails anyway fails the
read as :class:`~ferry.providers.base.SourceInterrupted`: a retry takes a new lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
from pyVmomi import vim, vmodl

from ferry.proto.inventory import Vm
from ferry.providers.base import Pace, ProviderError, SourceInterrupted
from ferry.providers.vsphere.client import Session, fault_text

log = logging.getLogger(__name__)

READY_TIMEOUT = 300.0  # seconds a lease may take to leave "initializing"
KEEP_ALIVE_CAP = 60.0  # progress calls at least this often
CHUNK = 1 << 20
DISK_TRANSFERS = ("datastore", "nfc")


def disk_transfer(settings: dict[str, str] | Any) -> str:
    """The Provider's ``diskTransfer``: ``datastore`` (the default) or ``nfc``."""
    chosen = settings.get("diskTransfer", "datastore") or "datastore"
    if chosen not in DISK_TRANSFERS:
        raise ProviderError(
            f"vSphere provider setting diskTransfer is {chosen!r}; "
            f"one of {', '.join(DISK_TRANSFERS)}"
        )
    return str(chosen)


class LeaseEnded(SourceInterrupted):
    """The export lease expired or failed before the disk was read: retried anew."""


class ExportLease:
    """One ``ExportVm`` lease of a VM, shared by the readers of its disks."""

    def __init__(self, session: Session, vm: Vm, lease: Any, timeout: float) -> None:
        self.session = session
        self.vm = vm
        self.lease = lease
        self.timeout = timeout
        self.users = 0
        self.failed = False
        self.done: dict[str, tuple[int, int]] = {}  # disk id → (bytes read, expected)
        self._keeper: asyncio.Task[None] | None = None
        self.urls: dict[str, tuple[str, int]] = {}  # disk id → (device URL, fileSize)

    def url_of(self, disk_id: str) -> tuple[str, int]:
        """The device URL of ``disk_id`` (see :func:`match_disks`), with the host filled in."""
        found = self.urls.get(disk_id)
        if found is None:
            raise ProviderError(f"VM {self.vm.id}: the export lease lists no disk {disk_id}")
        url, size = found
        return url.replace("*", self.session.netloc, 1), size

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep(), name=f"ferry-nfc-{self.vm.id}")

    async def _keep(self) -> None:
        period = min(KEEP_ALIVE_CAP, max(1.0, self.timeout / 3))
        while True:
            await asyncio.sleep(period)
            try:
                await self.session.call(self._progress)
            except Exception as exc:  # the download will see the lease gone
                log.warning("VM %s: export lease progress not taken: %s", self.vm.id, exc)

    def bound(self, si: Any) -> Any:
        """The lease on ``si``'s connection (the session may have logged in again since)."""
        return vim.HttpNfcLease(self.lease._moId, stub=si._stub)

    def _progress(self, si: Any) -> None:
        self.bound(si).HttpNfcLeaseProgress(self.percent())

    def percent(self) -> int:
        done = sum(d for d, _ in self.done.values())
        total = sum(t for _, t in self.done.values()) or 1
        return max(0, min(99, done * 100 // total))

    async def state(self) -> tuple[str, str]:
        """The lease's state now, and its error's words when it has one."""

        def read(si: Any) -> tuple[str, str]:
            # Through the property collector: an unset error is then absent, not a fetch
            # of nothing (which some servers answer badly).
            collector = vmodl.query.PropertyCollector
            spec = collector.FilterSpec(
                objectSet=[collector.ObjectSpec(obj=self.bound(si))],
                propSet=[collector.PropertySpec(type=vim.HttpNfcLease, pathSet=["state", "error"])],
            )
            found: dict[str, Any] = {}
            for item in si.RetrieveContent().propertyCollector.RetrieveContents([spec]) or []:
                found.update({prop.name: prop.val for prop in item.propSet})
            error = found.get("error")
            return str(found.get("state", "")), fault_text(error.fault) if error else ""

        return await self.session.call(read)

    async def end(self) -> None:
        """Complete the lease, or abort it when a reader failed (never left open)."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        verb = "HttpNfcLeaseAbort" if self.failed else "HttpNfcLeaseComplete"
        try:
            await self.session.call(lambda si: getattr(self.bound(si), verb)())
        except Exception as exc:  # an expired lease refuses both: it is over anyway
            log.info("VM %s: export lease not %s: %s", self.vm.id, verb[12:].lower(), exc)


class Leases:
    """The export leases a provider holds, one per VM while its disks are read."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._by_vm: dict[str, ExportLease] = {}
        # One lock per VM while anyone holds or waits for it: opening a lease can take
        # a while, and other VMs' readers need not wait for it.
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def of(self, vm: Vm, ref_of: Any) -> AsyncIterator[ExportLease]:
        """The VM's lease, opened by the first reader and ended by the last."""
        async with self._vm_lock(vm.id):
            shared = self._by_vm.get(vm.id)
            if shared is None:
                shared = await self._open(vm, ref_of)
                self._by_vm[vm.id] = shared
            shared.users += 1
        ok = False
        try:
            yield shared
            ok = True
        finally:
            async with self._vm_lock(vm.id):
                shared.users -= 1
                shared.failed = shared.failed or not ok
                if shared.users == 0:
                    self._by_vm.pop(vm.id, None)
                    await shared.end()

    @contextlib.asynccontextmanager
    async def _vm_lock(self, vm_id: str) -> AsyncIterator[None]:
        lock, count = self._locks.setdefault(vm_id, (asyncio.Lock(), [0]))
        count[0] += 1
        try:
            async with lock:
                yield
        finally:
            count[0] -= 1
            if count[0] == 0:
                self._locks.pop(vm_id, None)

    async def _open(self, vm: Vm, ref_of: Any) -> ExportLease:
        def export(si: Any) -> Any:
            return ref_of(si).ExportVm()

        try:
            lease = await self.session.call(export)
        except Exception as exc:
            raise ProviderError(
                f"VM {vm.id}: vSphere refused an export lease: {fault_text(exc)} "
                "(an NFC export reads a powered-off VM)"
            ) from None
        shared = ExportLease(self.session, vm, lease, 0.0)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            state, error = await shared.state()
            if state == "ready":
                break
            if state != "initializing" or time.monotonic() > deadline:
                shared.failed = True
                await shared.end()
                why = error or f"still {state} after {READY_TIMEOUT:.0f}s"
                raise ProviderError(f"VM {vm.id}: the export lease did not become ready: {why}")
            await asyncio.sleep(0.2)

        def info(si: Any) -> tuple[float, list[Device], dict[str, str]]:
            found = shared.bound(si).info
            devices = [
                Device(str(d.key), str(d.url), int(d.fileSize or 0))
                for d in found.deviceUrl
                if d.disk
            ]
            return float(found.leaseTimeout or 300), devices, device_paths(ref_of(si))

        try:
            shared.timeout, devices, paths = await self.session.call(info)
            shared.urls = match_disks(vm, devices, paths)
        except BaseException:
            shared.failed = True
            await shared.end()
            raise
        shared.start()
        return shared


class Device(NamedTuple):
    """One disk's entry in a lease: its key, its URL, its size if the server says it."""

    key: str
    url: str
    size: int


def device_paths(vm_ref: Any) -> dict[str, str]:
    """Disk key → where it sits, as leases name devices: ``VirtualLsiLogicController0:0``."""
    devices = list(vm_ref.config.hardware.device)
    controllers = {d.key: d for d in devices if isinstance(d, vim.vm.device.VirtualController)}
    paths: dict[str, str] = {}
    for disk in devices:
        if not isinstance(disk, vim.vm.device.VirtualDisk):
            continue
        controller = controllers.get(disk.controllerKey or 0)
        if controller is None:
            continue
        kind = type(controller).__name__.rsplit(".", 1)[-1]
        paths[str(disk.key)] = f"{kind}{controller.busNumber}:{disk.unitNumber}"
    return paths


def match_disks(vm: Vm, devices: list[Device], paths: dict[str, str]) -> dict[str, tuple[str, int]]:
    """Each of the VM's disks with its device in the lease: never one disk's bytes for another.

    By key, where the lease's keys end in the disk's controller and unit (as vSphere
    names them, ``/vm-42/VirtualLsiLogicController0:0``); otherwise, when every key is
    of another form, by position (a lease lists disks in the VM's device order), each
    checked against the disk's size where the lease states it. Anything else — a count
    that differs, a key that matches no disk or two — is refused.
    """
    where = f"VM {vm.id}: the export lease"
    if len(devices) != len(vm.disks):
        raise ProviderError(f"{where} lists {len(devices)} disks, the VM has {len(vm.disks)}")
    by_tail: dict[str, list[Device]] = {}
    for device in devices:
        by_tail.setdefault(device.key.rsplit("/", 1)[-1], []).append(device)
    keyed = [paths.get(d.id) for d in vm.disks]
    matched: list[Device] = []
    if all(path is not None and len(by_tail.get(path, [])) == 1 for path in keyed):
        matched = [by_tail[str(path)][0] for path in keyed]
    elif any(path is not None and path in by_tail for path in keyed):
        raise ProviderError(f"{where} names its disks so that they cannot all be told apart")
    else:
        matched = list(devices)
    result: dict[str, tuple[str, int]] = {}
    for disk, device in zip(vm.disks, matched, strict=True):
        if device.size and device.size != disk.capacity:
            raise ProviderError(
                f"{where} offers {device.size} bytes as disk {disk.id} ({device.key}), "
                f"the disk is {disk.capacity}"
            )
        result[disk.id] = (device.url, device.size)
    return result


async def download(
    lease: ExportLease,
    disk_id: str,
    folder: Path,
    ssl: Any,
    cookie: str,
    name: str,
    pace: Pace | None = None,
) -> Path:
    """Read ``disk_id``'s stream into ``folder``; the file, flushed to disk.

    ``pace``: the copy's bandwidth budgets, asked for each chunk as it arrives; the next
    is not read until they grant it, so the server is held back by the connection's
    own flow control."""
    url, expected = lease.url_of(disk_id)
    bound = stream_bound(next(d.capacity for d in lease.vm.disks if d.id == disk_id))
    target = folder / f"{disk_id}.vmdk"
    lease.done[disk_id] = (0, expected)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    got = 0
    try:
        async with (
            aiohttp.ClientSession(
                headers={"Cookie": cookie}, connector=aiohttp.TCPConnector(ssl=ssl), timeout=timeout
            ) as http,
            http.get(url) as response,
        ):
            if response.status != 200:
                raise await _refused(lease, name, f"HTTP {response.status}")
            length = int(response.headers.get("Content-Length", "-1"))
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    if got + len(chunk) > bound:
                        raise ProviderError(
                            f"disk {name}: the export stream runs past {bound} bytes, more "
                            "than a streamOptimized VMDK of the disk can hold; stopped"
                        )
                    if pace is not None:
                        await pace(len(chunk))
                    await asyncio.to_thread(_write_all, fd, chunk)
                    got += len(chunk)
                    lease.done[disk_id] = (got, max(expected, length, got))
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
    except aiohttp.ClientError as exc:
        raise await _refused(lease, name, f"{type(exc).__name__}: {exc}") from None
    if 0 <= length != got:
        raise await _refused(lease, name, f"{got} of {length} bytes")
    return target


def stream_bound(capacity: int) -> int:
    """The most a streamOptimized VMDK of a disk of ``capacity`` bytes can take: every
    grain stored as it is with its marker and padding, the tables, the footer."""
    return capacity + capacity // 32 + (16 << 20)


async def _refused(lease: ExportLease, name: str, what: str) -> Exception:
    """The reason a download stopped: the lease's own when it ended, else ``what``."""
    try:
        state, error = await lease.state()
    except Exception:
        state, error = "unknown", ""
    if state != "ready":
        return LeaseEnded(
            f"disk {name}: the export lease ended during the download ({state}"
            f"{': ' + error if error else ''}); retried with a new lease"
        )
    return ProviderError(f"disk {name}: the export stream broke off: {what}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def check_stream(path: Path, capacity: int, name: str) -> None:
    """The download must be a plain streamOptimized VMDK of the disk's size."""
    out = await qemu_img_json(
        ["info", "--output=json", "-f", "vmdk", str(path)],
        f"disk {name}: the exported stream is no VMDK qemu can read: ",
    )
    info = out
    data = (info.get("format-specific") or {}).get("data") or {}
    kind = data.get("create-type")
    extents = data.get("extents") or []
    own = len(extents) == 1 and extents[0].get("filename") == str(path)
    if kind != "streamOptimized" or info.get("backing-filename") or not own:
        raise ProviderError(
            f"disk {name}: the exported stream is a {kind or 'different'} VMDK, "
            "not one streamOptimized file"
        )
    if int(info.get("virtual-size", -1)) != capacity:
        raise ProviderError(
            f"disk {name}: the exported stream holds {info.get('virtual-size')} bytes, "
            f"the disk is {capacity}"
        )


async def qemu_img_json(args: list[str], failed: str) -> Any:
    """``qemu-img <args>``'s JSON answer; a failure is ``failed`` and qemu's own words."""
    process = await asyncio.create_subprocess_exec(
        "qemu-img",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise ProviderError(failed + err.decode(errors="replace").strip()[-300:])
    return json.loads(out)


def private_folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="ferry-nfc-"))


def remove(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
