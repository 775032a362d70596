"""bench/warm: a warm migration's rounds against a full copy of the same disk, and downtime.

A real libvirt guest (QEMU, software emulation, no operating system) with one
qcow2 disk of ``--size-mib``, half of it written before the first round; between
rounds ``--writes`` blocks of 4 KiB are written at random places through QEMU
(``qemu-io`` on the monitor, so they land in the dirty bitmaps as a guest's
writes would). Every round runs through the volume-service's real handler and
the local platform's importer workloads (``ferry.volume_service.warm``), as in a
migration.

Printed per round: bytes the source reported changed, bytes written, seconds.
Downtime is measured from the source's power-off to the target volume holding
the final data: warm = shutdown + last delta (with its whole-disk comparison
unless ``--no-final-verify``);
cold = shutdown + a full copy of the same disk (the first round, which is the
cold copy's work). Conversion and boot, equal for both, are not included.

Usage: ``.venv/bin/python bench/warm/run.py [--size-mib 512] [--rounds 3] [--writes 200]``.
Needs root and libvirtd (started if none runs).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from pathlib import Path

import libvirt

from ferry.bus import Router
from ferry.platform import factory as platforms
from ferry.platform.settings import LocalSettings, PlatformSettings
from ferry.proto import volume
from ferry.proto.inventory import ProviderType, Vm, VolumeTarget
from ferry.proto.subjects import Service
from ferry.proto.volume import SourceRef, VolumeSource
from ferry.providers.base import Provider
from ferry.providers.libvirt.provider import LibvirtProvider
from ferry.testing import libvirtd
from ferry.testing.broker import InMemoryBroker
from ferry.volume_service.handlers import VolumeHandlers
from ferry.volume_service.settings import VolumeSettings

MiB = 1024 * 1024
IDS = {"plan": "bench", "migration": "warm", "vm": "v"}


def _command(vm: Vm, ref: SourceRef, precopy: int, since: str, final: bool) -> volume.CopyDisks:
    return volume.CopyDisks(
        **IDS, step=f"CopyDisks@{precopy}", namespace="bench", provider=ref, inventory=vm,
        precopy=precopy, final=final, warm=True, since=since,
    )  # fmt: skip


async def _send(broker: InMemoryBroker, cmd: volume.CopyDisks) -> tuple[volume.DisksCopied, float]:
    began = time.monotonic()
    done = await broker.send(cmd)
    took = time.monotonic() - began
    copied = [m for m in done.published if isinstance(m, volume.DisksCopied)]
    if not copied:
        raise SystemExit(f"round {cmd.precopy} failed: {done.failed}")
    return copied[-1], took


async def main(size_mib: int, rounds: int, writes: int, verify: bool) -> None:
    uri = libvirtd.ensure_running()
    conn = libvirt.open(uri)
    size = size_mib * MiB
    fill = [(o, MiB, 0x40 + (o // MiB) % 64) for o in range(0, size, 2 * MiB)]
    guest = libvirtd.define_guest(conn, [size], fill=fill)
    work = libvirtd.scratch_dir("ferry-bench-")
    data = Path(tempfile.mkdtemp(prefix="ferry-bench-data-"))
    provider = LibvirtProvider(uri, {}, {"workdir": str(work)})
    platform = platforms.create(PlatformSettings(local=LocalSettings()), data_dir=data)
    ref = SourceRef(provider="kvm", type=ProviderType.LIBVIRT, url=uri)

    async def open_provider(_ref: SourceRef) -> Provider:
        return provider

    router = Router(Service.VOLUME)
    settings = VolumeSettings(warm_final_verify=verify)
    VolumeHandlers(platform, open_provider, settings).register(router)
    rng = random.Random(7)
    rows: list[tuple[str, int, int, float]] = []
    try:
        async with InMemoryBroker(router) as broker:
            vm = await provider.vm(guest.name)
            target = VolumeTarget(disk_id="vda", storage_class="standard")
            await broker.send(
                volume.CreateVolumes(
                    **IDS,
                    step="CreateDataVolumes",
                    namespace="bench",
                    source=VolumeSource.IMPORTER,
                    provider=ref,
                    inventory=vm,
                    targets=[target],
                )
            )
            done, took = await _send(broker, _command(vm, ref, 0, "", False))
            rows.append(("full (round 0)", done.changed, done.disks[0].bytes_copied, took))
            full_seconds, since = took, done.checkpoint
            for precopy in range(1, rounds + 1):
                for _ in range(writes):
                    guest.write("vda", rng.randrange(0, size // 4096) * 4096, 4096, 0x99)
                done, took = await _send(broker, _command(vm, ref, precopy, since, False))
                rows.append((f"precopy {precopy}", done.changed, done.disks[0].bytes_copied, took))
                since = done.checkpoint
            for _ in range(writes):
                guest.write("vda", rng.randrange(0, size // 4096) * 4096, 4096, 0x77)
            off_began = time.monotonic()
            await provider.shutdown(vm, timeout=0.0)
            shutdown = time.monotonic() - off_began
            done, took = await _send(broker, _command(vm, ref, rounds + 1, since, True))
            rows.append(("final (source off)", done.changed, done.disks[0].bytes_copied, took))
    finally:
        guest.remove()
        await provider.close()
        conn.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    print(
        f"bench/warm: {size_mib} MiB qcow2 disk, {writes} random 4 KiB writes between rounds, "
        f"whole-disk compare at cutover: {'on' if verify else 'off'}"
    )
    print(f"{'round':<20} {'changed':>12} {'written':>12} {'seconds':>8}")
    for name, changed, written, seconds in rows:
        print(f"{name:<20} {changed:>12,} {written:>12,} {seconds:>8.2f}")
    warm_down, cold_down = shutdown + rows[-1][3], shutdown + full_seconds
    print(
        f"downtime (source off -> final data on the target): warm {warm_down:.2f} s, "
        f"cold {cold_down:.2f} s (shutdown {shutdown:.2f} s, forced: no OS to answer ACPI)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument(
        "--no-final-verify", action="store_true", help="skip the whole-disk compare at cutover"
    )
    args = parser.parse_args()
    asyncio.run(main(args.size_mib, args.rounds, args.writes, not args.no_final_verify))
