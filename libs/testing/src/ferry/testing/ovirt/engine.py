"""A stand-in for the oVirt engine's REST API, as much of it as Ferry's oVirt provider uses.

The real engine cannot run here; this answers the real ``ovirtsdk4`` client over HTTPS
(its certificate signed by the imageio daemon's test CA, one CA as on oVirt) with the
SDK's own XML writers and readers, so every document has the shape the SDK parses:

- SSO: ``POST /ovirt-engine/sso/oauth/token`` (password grant, JSON) and the logout;
  every API request needs the bearer token (401 otherwise, as the engine answers).
- ``vms`` (list, ``search=name=…``, one), their ``diskattachments`` and ``nics``;
  ``disks``; ``storagedomains``.
- VM actions ``shutdown`` (ACPI: ``powering_down`` then ``down``, unless the guest
  ignores it), ``stop`` (``down`` at once) and ``start`` (``powering_up`` then ``up``).
- ``imagetransfers``: add (download of a disk, ``format=raw``), list, get, ``finalize``,
  ``cancel``. The phases go ``initializing`` → ``transferring`` (on the next read, with
  ``transfer_url``/``proxy_url``) → ``finalizing_success`` → ``finished_success``, or
  ``cancelled_user`` → ``finished_failure``; a finished transfer is gone (404) after it
  has been read once in its final phase. The disk is ``locked`` while a transfer holds
  it. Like the engine, each transfer hands out a ticket on the **real imageio daemon**
  (:mod:`ferry.testing.ovirt.imageio`) over a ``qemu-nbd`` of the disk, and removes it
  when the transfer ends.

Refused as the engine refuses (409 fault): a transfer of a disk of a running VM (only
backups or snapshots may read those), a second transfer of a locked disk, starting a VM
whose disk a transfer holds locked; and (400) a ``cow`` (qcow2 as stored) download or
an upload, which this stand-in does not model.

Incremental backups and checkpoints (``/vms/{id}/backups``, ``/vms/{id}/checkpoints``) are
:mod:`.backups`, backed by a real libvirt pull-mode backup of the VM's running libvirt
domain (:mod:`.vdsm`); an image transfer may name a backup (``backup``), and then reads
that backup's NBD export of the disk (a running VM's too), with a ``dirty`` ticket for
an incremental, and leaves the disk locked by the backup when it ends.

Not modelled: hosts, clusters, templates, snapshots, the transfer's inactivity pause,
jobs and events, permissions, and any field Ferry does not read.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import threading
from pathlib import Path
from typing import Any

from aiohttp import web
from ovirtsdk4 import reader, types

from ferry.testing.ovirt import vdsm
from ferry.testing.ovirt.backups import Backups
from ferry.testing.ovirt.imageio import Imageio, free_port
from ferry.testing.ovirt.records import Disk, Nic, Transfer, VmRecord, follow
from ferry.testing.ovirt.replies import conflict as _conflict
from ferry.testing.ovirt.replies import fault as _fault
from ferry.testing.ovirt.replies import xml as _xml

__all__ = ["Disk", "Engine", "Nic", "Transfer", "VmRecord"]

API = "/ovirt-engine/api"


class Engine:
    """The stand-in; ``url`` is the API base for ``ovirtsdk4.Connection``."""

    def __init__(self, imageio: Imageio, username: str = "admin@internal",
                 password: str = "") -> None:  # fmt: skip
        self.imageio = imageio
        self.username = username
        self.password = password or secrets.token_urlsafe(12)
        self.vms: dict[str, VmRecord] = {}
        self.transfers: dict[str, Transfer] = {}
        self.tokens: set[str] = set()
        self.actions: list[tuple[str, str]] = []  # (vm name, action) in order
        self.ended: dict[str, str] = {}  # transfer id → the phase it finished in
        self.backups = Backups(self)
        self.port = 0
        self.delay = 0.3  # seconds a power transition takes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{API}"

    @property
    def ca_file(self) -> Path:
        """The CA that signs the API's certificate and the imageio daemon's (as on oVirt)."""
        return self.imageio.ca_file

    def add_vm(self, vm: VmRecord) -> VmRecord:
        self.vms[vm.id] = vm
        return vm

    def open_transfers(self) -> list[Transfer]:
        return list(self.transfers.values())

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.port = free_port()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._runner = web.AppRunner(self._app())
            loop.run_until_complete(self._runner.setup())
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            pki = self.imageio.root / "pki"
            tls.load_cert_chain(pki / "server.pem", pki / "server.key")
            site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=tls)
            loop.run_until_complete(site.start())
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="ovirt-engine-standin", daemon=True)
        self._thread.start()
        ready.wait(30)

    def stop(self) -> None:
        for transfer in list(self.transfers.values()):
            self._end(transfer, "finished_failure")
        self.backups.stop()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ----------------------------------------------------------------------------

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        r = app.router
        r.add_post("/ovirt-engine/sso/oauth/token", self._token)
        r.add_post("/ovirt-engine/services/sso-logout", self._logout)
        r.add_get(API, self._api)
        r.add_get(API + "/vms", self._vms)
        r.add_get(API + "/vms/{id}", self._vm)
        r.add_get(API + "/vms/{id}/diskattachments", self._attachments)
        r.add_get(API + "/vms/{id}/nics", self._nics)
        r.add_post(API + "/vms/{id}/{action:shutdown|stop|start}", self._power)
        r.add_get(API + "/disks/{id}", self._disk)
        r.add_get(API + "/storagedomains", self._domains)
        r.add_get(API + "/imagetransfers", self._transfers)
        r.add_post(API + "/imagetransfers", self._add_transfer)
        r.add_get(API + "/imagetransfers/{id}", self._transfer)
        r.add_post(API + "/imagetransfers/{id}/{action:finalize|cancel}", self._transfer_action)
        self.backups.routes(r, API)
        return app

    async def _api(self, _request: web.Request) -> web.Response:
        return _xml(types.Api(product_info=types.ProductInfo(name="oVirt Engine")))

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith(API):
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return web.Response(status=401, text="Unauthorized")
        result: web.StreamResponse = await handler(request)
        return result

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        ok = (
            form.get("grant_type") == "password"
            and form.get("scope") == "ovirt-app-api"
            and form.get("username") == self.username
            and form.get("password") == self.password
        )
        if not ok:
            return web.json_response(
                {"error_code": "access_denied", "error": "Cannot authenticate user."},
                status=400,
            )
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        return web.json_response({"access_token": token, "token_type": "bearer", "exp": "0"})

    async def _logout(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.tokens.discard(str(form.get("token", "")))
        return web.json_response({})

    def _find_vm(self, request: web.Request) -> VmRecord:
        vm = self.vms.get(request.match_info["id"])
        if vm is None:
            raise _fault(404, "Not Found", f"VM {request.match_info['id']} not found")
        follow(vm)
        return vm

    async def _vms(self, request: web.Request) -> web.Response:
        found = list(self.vms.values())
        for vm in found:
            follow(vm)
        search = request.query.get("search", "")
        if search.startswith("name="):
            found = [v for v in found if v.name == search[5:]]
        return _xml([_vm(v) for v in found], root="vms")

    async def _vm(self, request: web.Request) -> web.Response:
        return _xml(_vm(self._find_vm(request)))

    async def _attachments(self, request: web.Request) -> web.Response:
        vm = self._find_vm(request)
        rows = [
            types.DiskAttachment(
                id=d.id,
                disk=types.Disk(id=d.id),
                interface=types.DiskInterface(d.interface),
                bootable=d.bootable,
                active=True,
            )
            for d in vm.disks
        ]
        return _xml(rows, root="disk_attachments")

    async def _nics(self, request: web.Request) -> web.Response:
        vm = self._find_vm(request)
        rows = [
            types.Nic(
                id=n.id,
                name=n.name,
                mac=types.Mac(address=n.mac),
                interface=types.NicInterface(n.interface),
                network=types.Network(name=n.network),
                plugged=True,
            )
            for n in vm.nics
        ]
        return _xml(rows, root="nics")

    async def _power(self, request: web.Request) -> web.Response:
        vm = self._find_vm(request)
        action = request.match_info["action"]
        self.actions.append((vm.name, action))
        loop = asyncio.get_running_loop()
        if action == "stop":
            if vm.domain:
                await asyncio.to_thread(vdsm.power, vm.domain, action)
            vm.status = "down"
        elif action == "shutdown":
            if vm.status != "up":
                raise _conflict(f"Cannot shutdown VM. VM {vm.name} is not running.")
            vm.status = "powering_down"
            if vm.domain:  # the guest itself answers the power button, or does not
                await asyncio.to_thread(vdsm.power, vm.domain, action)
            elif not vm.ignores_shutdown:
                loop.call_later(self.delay, _settle, vm, "powering_down", "down")
        else:
            if vm.status != "down":
                raise _conflict(f"Cannot run VM. VM {vm.name} is running.")
            if any(d.locked for d in vm.disks):
                raise _conflict(f"Cannot run VM. A disk of VM {vm.name} is locked.")
            vm.status = "powering_up"
            if vm.domain:
                await asyncio.to_thread(vdsm.power, vm.domain, action)
            loop.call_later(self.delay, _settle, vm, "powering_up", "up")
        return _xml(types.Action(status="complete"))

    def _disk_by_id(self, disk_id: str) -> tuple[VmRecord | None, Disk]:
        for vm in self.vms.values():
            for disk in vm.disks:
                if disk.id == disk_id:
                    return vm, disk
        raise _fault(404, "Not Found", f"disk {disk_id} not found")

    async def _disk(self, request: web.Request) -> web.Response:
        _vm_of, d = self._disk_by_id(request.match_info["id"])
        allocated = d.image.stat().st_blocks * 512
        return _xml(
            types.Disk(
                id=d.id,
                name=d.name,
                alias=d.name,
                format=types.DiskFormat(d.format),
                provisioned_size=d.size,
                actual_size=allocated,
                total_size=allocated,
                sparse=True,
                status=types.DiskStatus.LOCKED if d.locked else types.DiskStatus.OK,
                storage_type=types.DiskStorageType.IMAGE,
                content_type=types.DiskContentType.DATA,
                storage_domains=[types.StorageDomain(id=d.domain, name=d.domain)],
                backup=types.DiskBackup(d.backup),
            )
        )

    async def _domains(self, _request: web.Request) -> web.Response:
        names = sorted({d.domain for v in self.vms.values() for d in v.disks})
        return _xml([types.StorageDomain(id=n, name=n) for n in names], root="storage_domains")

    async def _add_transfer(self, request: web.Request) -> web.Response:
        body = reader.Reader.read(await request.text())
        if not isinstance(body, types.ImageTransfer) or body.disk is None:
            raise _fault(400, "Bad Request", "an image transfer needs a disk")
        vm, disk = self._disk_by_id(body.disk.id)
        if body.direction not in (None, types.ImageTransferDirection.DOWNLOAD):
            raise _fault(400, "Bad Request", "this stand-in models downloads only")
        if body.format != types.DiskFormat.RAW:
            raise _fault(400, "Bad Request", "this stand-in models format=raw downloads only")
        if body.backup is not None and body.backup.id:
            return await self._add_backup_transfer(body, disk)
        if vm is not None and vm.status != "down":
            raise _conflict(f"Cannot transfer Virtual Disk: VM {vm.name} is running.")
        if disk.locked:
            raise _conflict(f"Cannot transfer Virtual Disk: Disk {disk.name} is locked.")
        disk.locked = True
        transfer = Transfer(disk, description=body.description or "")
        self.transfers[transfer.id] = transfer
        try:
            fmt = "qcow2" if disk.format == "cow" else "raw"
            transfer.ticket = await asyncio.to_thread(
                self.imageio.serve, disk.image, fmt, disk.size, transfer_id=transfer.id
            )
        except Exception:
            self._end(transfer, "finished_failure")
            raise
        return _xml(self._transfer_type(transfer), status=201)

    async def _add_backup_transfer(self, body: types.ImageTransfer, disk: Disk) -> web.Response:
        """A download of a disk from its backup's NBD export (the disk stays locked by the
        backup, which may belong to a running VM)."""
        url, dirty = self.backups.export(str(body.backup.id), disk)
        transfer = Transfer(disk, description=body.description or "", backup=str(body.backup.id))
        self.transfers[transfer.id] = transfer
        try:
            transfer.ticket = await asyncio.to_thread(
                self.imageio.add_nbd_ticket, url, disk.size, dirty=dirty, transfer_id=transfer.id
            )
        except Exception:
            self._end(transfer, "finished_failure")
            raise
        return _xml(self._transfer_type(transfer), status=201)

    def _find_transfer(self, request: web.Request) -> Transfer:
        transfer = self.transfers.get(request.match_info["id"])
        if transfer is None:
            raise _fault(404, "Not Found", f"image transfer {request.match_info['id']} not found")
        return transfer

    def _transfer_type(self, t: Transfer) -> types.ImageTransfer:
        live = t.phase == "transferring"
        url = self.imageio.url(t.ticket) if live else None
        return types.ImageTransfer(
            id=t.id,
            disk=types.Disk(id=t.disk.id),
            image=types.Image(id=t.disk.id),
            direction=types.ImageTransferDirection.DOWNLOAD,
            format=types.DiskFormat.RAW,
            phase=types.ImageTransferPhase(t.phase),
            description=t.description or None,
            transfer_url=url,
            proxy_url=url,
            backup=types.Backup(id=t.backup) if t.backup else None,
            host=types.Host(id="standin-host", name="standin-host"),
        )

    def _observe(self, t: Transfer) -> types.ImageTransfer:
        if t.phase == "initializing":
            t.phase = "transferring"
        elif t.phase in ("finished_success", "finished_failure"):
            t.reads_in_final_phase += 1
            if t.reads_in_final_phase > 1:
                self.transfers.pop(t.id, None)
                raise _fault(404, "Not Found", f"image transfer {t.id} not found")
        return self._transfer_type(t)

    async def _transfers(self, _request: web.Request) -> web.Response:
        rows = [self._transfer_type(t) for t in self.transfers.values()]
        return _xml(rows, root="image_transfers")

    async def _transfer(self, request: web.Request) -> web.Response:
        return _xml(self._observe(self._find_transfer(request)))

    async def _transfer_action(self, request: web.Request) -> web.Response:
        t = self._find_transfer(request)
        action = request.match_info["action"]
        if t.phase.startswith("finished"):
            raise _fault(409, "Operation Failed", f"image transfer {t.id} has ended ({t.phase})")
        if action == "finalize" and t.phase != "transferring":
            raise _fault(409, "Operation Failed", f"image transfer {t.id} is {t.phase}")
        t.phase = "finalizing_success" if action == "finalize" else "cancelled_user"
        final = "finished_success" if action == "finalize" else "finished_failure"
        await asyncio.to_thread(self._end, t, final)
        return _xml(types.Action(status="complete"))

    def _end(self, t: Transfer, phase: str) -> None:
        """Remove the ticket and its qemu-nbd, unlock the disk: the engine's clean-up."""
        if t.ticket:
            self.imageio.unserve(t.ticket)
        if not t.backup:  # a backup's disks stay locked until the backup is finalized
            t.disk.locked = False
        t.phase = phase
        self.ended.setdefault(t.id, phase)


def _settle(vm: VmRecord, expect: str, then: str) -> None:
    if vm.status == expect:
        vm.status = then


def _vm(v: VmRecord) -> types.Vm:
    return types.Vm(
        id=v.id,
        name=v.name,
        status=types.VmStatus(v.status),
        bios=types.Bios(type=types.BiosType(v.bios)),
        memory=v.memory,
        cpu=types.Cpu(topology=types.CpuTopology(cores=v.cores, sockets=1, threads=1)),
        os=types.OperatingSystem(type="other_linux"),
    )
