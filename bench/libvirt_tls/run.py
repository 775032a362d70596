"""bench/libvirt_tls: what reading a libvirt backup job over TLS costs, against nbdcopy.

A real libvirt guest (QEMU, software emulation, no operating system) with one qcow2
disk of ``--size-mib``, every other MiB written. One full backup view per transport,
through the provider as a migration opens it:

* ``unix``: the job's NBD server on a Unix socket (a local host), read by Ferry's
  ``NbdClient`` in the copy engine's 4 MiB requests;
* ``tls``: the job on TCP with TLS (a remote host's, here on localhost), read by the
  same client through Ferry's local ``qemu-nbd`` relay;
* ``nbdcopy tls``: the plain tool reading the same TLS export itself (``nbds://`` with
  the same client certificate) into ``null:``, the whole disk with its holes.

Each is timed over the written extents (``nbdcopy``: the whole disk; it skips holes by
block status), best of ``--repeat`` passes, the order rotated per pass. Printed: MiB of
data read, seconds, MiB/s. Needs root and libvirtd (started if none runs); installs the
test CA in ``/etc/pki/qemu`` as the tests do.

Usage: ``.venv/bin/python bench/libvirt_tls/run.py [--size-mib 512] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable

import libvirt

from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.providers.nbd import NbdClient
from ferry.testing import backup_tls, libvirtd

MiB = 1024 * 1024
CHUNK = 4 * MiB


def _read_all(socket: str, export: str, extents: list[tuple[int, int]]) -> int:
    client = NbdClient(socket, export)
    buffer = memoryview(bytearray(CHUNK))
    done = 0
    try:
        for offset, length in extents:
            for start in range(offset, offset + length, CHUNK):
                part = buffer[: min(CHUNK, offset + length - start)]
                client.readinto(start, part)
                done += len(part)
    finally:
        client.close()
    return done


async def _ferry(provider: LibvirtProvider, vm_name: str) -> tuple[int, float]:
    vm = await provider.vm(vm_name)
    async with provider.open_disk(vm, "vda") as disk:
        extents = [(e.offset, e.length) for e in await disk.extents()]
        view = disk._view  # the shared backup view the reader opened
        assert view is not None
        socket, export = view.nbd_export("vda")
        began = time.monotonic()
        done = await asyncio.to_thread(_read_all, socket, export, extents)
        return done, time.monotonic() - began


async def _nbdcopy(provider: LibvirtProvider, vm_name: str) -> tuple[int, float]:
    vm = await provider.vm(vm_name)
    async with provider.changes(vm, None) as view:
        inner = view._inner  # type: ignore[attr-defined]
        credentials = provider._credentials
        uri = (f"nbds://localhost:{inner._port}/ferry-vda"
               f"?tls-certificates={credentials}")  # fmt: skip
        data = sum(e.length for e in await view.changed_extents("vda"))
        checkpoint = view.checkpoint
        began = time.monotonic()
        subprocess.run(["nbdcopy", uri, "null:"], check=True, capture_output=True)
        took = time.monotonic() - began
    await provider.remove_checkpoint(vm, checkpoint)
    return data, took


async def main(size_mib: int, repeat: int) -> None:
    uri = libvirtd.ensure_running()
    pems = backup_tls.ensure()
    conn = libvirt.open(uri)
    size = size_mib * MiB
    fill = [(o, MiB, 0x40 + (o // MiB) % 64) for o in range(0, size, 2 * MiB)]
    guest = libvirtd.define_guest(conn, [size], fill=fill)
    unix_work = libvirtd.scratch_dir("ferry-bench-")
    tls_work = libvirtd.scratch_dir("ferry-bench-")
    unix = LibvirtProvider(uri, {}, {"workdir": str(unix_work)})
    tls = LibvirtProvider(uri, pems.secret(), backup_tls.provider_settings(tls_work))
    runs: dict[str, Callable[[], Awaitable[tuple[int, float]]]] = {
        "unix (Ferry)": lambda: _ferry(unix, guest.name),
        "tls (Ferry, relay)": lambda: _ferry(tls, guest.name),
        "tls (nbdcopy)": lambda: _nbdcopy(tls, guest.name),
    }
    best: dict[str, tuple[int, float]] = {}
    try:
        names = list(runs)
        for n in range(repeat):
            for name in names[n % len(names) :] + names[: n % len(names)]:
                done, took = await runs[name]()
                if name not in best or took < best[name][1]:
                    best[name] = (done, took)
        print(f"disk {size_mib} MiB, {size_mib // 2} MiB written; best of {repeat}")
        for name, (done, took) in best.items():
            print(f"{name:<20} {done / MiB:8.0f} MiB {took:7.2f} s {done / MiB / took:8.0f} MiB/s")
    finally:
        await unix.close()
        await tls.close()
        guest.remove()
        conn.close()
        shutil.rmtree(unix_work, ignore_errors=True)
        shutil.rmtree(tls_work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.size_mib, args.repeat))
