"""virt-v2v's input side for a vSphere VM: Ferry's own reading, as ``-i libvirtxml``.

virt-v2v's ``-i libvirt -ic vpx://`` asks libvirt's ESX driver to read the VM's
``.vmx`` from the datastore and then reads the disks itself. Ferry does not use it:
the domain is built here from the vSphere inventory Ferry already read (CPUs,
memory, firmware, disks in order with their buses, NICs with their MACs), the same
facts the rest of the migration uses, and each disk is read over the datastore HTTP
path (``/folder``, the VM's flat extent, as the importer copy reads it) by an
``nbdkit curl`` that Ferry starts. That is also how Forklift's virt-v2v gets
VMware disks (through nbdkit, with its VDDK plugin); VDDK is not used here: it is
VMware's closed library, which no package registry ships, so a clean clone could
not build or test it. Its NFC transport reads snapshots and thick disks faster on
real hosts; the datastore path reads a powered-off VM's flat extents, which is
what a cold migration needs.

Each nbdkit runs *captive* around virt-v2v (``nbdkit --run``, one per disk, nested):
it lives exactly as long as the conversion, in the conversion's workload (a child
process here, the conversion pod in a cluster), and dies with it on cancel. It
serves read-only on a Unix socket in the conversion's private work directory, so no
other user of the host can read the disk meanwhile (a loopback TCP port would let
any); the domain names each disk as a qemu description of that export (a ``file``
disk whose name is a ``json:`` description: virt-v2v's qemu-nbd opens it, so the
socket needs no network disk type, and never probes a format). Where the workload
sees the work directory elsewhere (a pod), the conversion-service points the socket
paths there.

The session cookie is a credential: it goes into a 0600 file that nbdkit reads
(``cookie=+FILE``), listed in :attr:`V2vInput.files` so the workload gets it as a
secret file; it is never on a command line or in an environment. A pinned server's
certificate is curl's only CA; ``sslverify=false`` only when the Provider is insecure.

nbdkit reads that file once, when it starts: a new login could not reach it. So the
session behind the cookie is kept alive for as long as the conversion runs
(:attr:`V2vInput.hold`, a :mod:`~ferry.providers.vsphere.keepalive` hold the
conversion-service enters around the workload); if the session ends anyway, the
failed conversion's reason names the ended session instead of virt-v2v's I/O errors.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ferry.proto.inventory import Vm
from ferry.providers import libvirtxml
from ferry.providers.base import Pace, ProviderError, V2vInput
from ferry.providers.vsphere import nfc
from ferry.providers.vsphere.client import Session
from ferry.providers.vsphere.disks import (
    DatastoreDiskReader,
    DatastoreFile,
    aiohttp_ssl,
    curl_trust,
    write_secret,
)


def nbd_filename(socket_path: Path) -> str:
    """The qemu description of a raw NBD export on the Unix socket."""
    options = {
        "driver": "raw",
        "file": {"driver": "nbd", "server": {"type": "unix", "path": str(socket_path)}},
    }
    return "json:" + json.dumps(options, separators=(",", ":"), sort_keys=True)


def nbdkit_argv(url: str, socket_path: Path, cookie: Path, trust: list[str]) -> list[str]:
    """One disk's server, read-only on ``socket_path``; the service adds ``--run``."""
    return [
        "nbdkit",
        "--readonly",
        f"--unix={socket_path}",
        "curl",
        f"url={url}",
        f"cookie=+{cookie}",
        *trust,
    ]


async def v2v_input(session: Session, vm: Vm, workdir: Path) -> V2vInput:
    """The domain document and one captive nbdkit per disk, files written into ``workdir``.

    Each disk's file is checked first (HEAD: there, readable, as large as the disk), so
    a missing flat extent is the provider's clear reason, not a line deep in virt-v2v's log.
    """
    if not vm.disks:
        raise ProviderError(f"VM {vm.name!r} has no disk to convert")
    files: list[DatastoreFile] = []
    for disk in vm.disks:
        if disk.rdm:
            raise ProviderError(f"disk {disk.name!r} of {vm.id} is a raw device mapping")
        file = DatastoreFile.of_backing(vm.datacenter, disk.backing)
        reader = DatastoreDiskReader(session, file, disk.capacity, f"{vm.id}:{disk.id}")
        try:
            await reader.probe()
        finally:
            await reader.close()
        files.append(file)
    cookie_text = await asyncio.to_thread(session.cookie)
    cookie = write_secret(workdir / "vsphere-cookie", cookie_text)
    trust = curl_trust(session, workdir)
    sockets = [workdir / f"nbd-{index}.sock" for index in range(len(vm.disks))]
    captive = [
        nbdkit_argv(file.url(session.netloc), path, cookie, trust)
        for file, path in zip(files, sockets, strict=True)
    ]
    document = workdir / "vsphere-domain.xml"
    document.write_bytes(libvirtxml.source_domain(vm, [nbd_filename(p) for p in sockets]))
    written = [str(cookie), str(document)]
    written += [arg.split("=", 1)[1] for arg in trust if arg.startswith("cainfo=")]
    written = [path for path in written if path.startswith(str(workdir))]
    return V2vInput(
        argv=["-i", "libvirtxml", str(document)],
        files=written,
        captive=captive,
        hold=session.keepalive.hold(cookie_text, f"the conversion of VM {vm.id}"),
        workload_paths=[str(path) for path in sockets],
    )


async def nfc_input(
    session: Session,
    leases: nfc.Leases,
    vm: Vm,
    workdir: Path,
    ref_of: Callable[[Any], Any],
    pace: Pace | None = None,
) -> V2vInput:
    """``diskTransfer: nfc``: every disk downloaded through the VM's export lease into
    ``workdir`` (checked, see :mod:`~ferry.providers.vsphere.nfc`) before virt-v2v
    starts, and the domain names each as a local streamOptimized VMDK. No helper runs
    beside virt-v2v and no session is held while it runs; the downloads live and go
    with the conversion's work directory (they must be on the host virt-v2v runs on).
    """
    if not vm.disks:
        raise ProviderError(f"VM {vm.name!r} has no disk to convert")
    folder = workdir / "nfc"
    shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt's, in a reused workdir
    folder.mkdir(mode=0o700)
    cookie = await asyncio.to_thread(session.cookie)
    hold = session.keepalive.hold(cookie, f"the export of VM {vm.id}")
    hold.start()
    try:
        ssl = aiohttp_ssl(session)
        async with leases.of(vm, ref_of) as lease:
            paths = [
                await nfc.download(lease, d.id, folder, ssl, cookie, f"{vm.id}:{d.id}", pace)
                for d in vm.disks
            ]
    finally:
        hold.stop()
    names = []
    for disk, path in zip(vm.disks, paths, strict=True):
        await nfc.check_stream(path, disk.capacity, f"{vm.id}:{disk.id}")
        options = {"driver": "vmdk", "file": {"driver": "file", "filename": str(path)}}
        names.append("json:" + json.dumps(options, separators=(",", ":"), sort_keys=True))
    document = workdir / "vsphere-domain.xml"
    document.write_bytes(libvirtxml.source_domain(vm, names))
    return V2vInput(
        argv=["-i", "libvirtxml", str(document)],
        files=[str(document)],
        host_files=[str(path) for path in paths],
    )
