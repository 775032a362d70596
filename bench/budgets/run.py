"""Bench: two plans' copies sharing one host's bandwidth budget of N MiB/s, through the
data movers.

Two volume-service replicas (each its own process, its own bus connection, one
storage root as replicas on shared storage) take CopyDisks commands of two plans,
each VM an OVA with one raw disk (half data) on host esx1; every command carries
the host's bandwidth budget, as the controller's scheduler hands it out. The
importer workloads ask for every chunk before they read it, and the replicas
share one rate for the budget (``ferry.bus.rate.SharedRate``). Reported, in the
same run: one unthrottled copy (what the device gives, so N is seen to be below
it), then the aggregate while both plans ran, each plan's own rate, and the
distance from N.

Usage: .venv/bin/python bench/budgets/run.py [--mibps 40] [--vms 3] [--disk-mib 128]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests/integration/providers"))  # ovfkit: real OVA packages
sys.path.insert(0, str(ROOT / "tests/integration/volume_service"))

from volume_harness import Ova, copy, create, make_ova  # noqa: E402

from ferry.bus import Bus, TopologySettings, declare  # noqa: E402
from ferry.bus.rate import account  # noqa: E402
from ferry.platform.copy import engine  # noqa: E402
from ferry.platform.copy.sink import RawFileSink  # noqa: E402
from ferry.platform.copy.source import RawFileSource  # noqa: E402
from ferry.platform.settings import LocalSettings, PlatformSettings  # noqa: E402
from ferry.proto import volume  # noqa: E402
from ferry.proto.subjects import Service  # noqa: E402
from ferry.proto.volume import Bandwidth, VolumeSource  # noqa: E402
from ferry.testing.nats import NatsServer  # noqa: E402
from ferry.volume_service import app  # noqa: E402
from ferry.volume_service.settings import Settings, VolumeSettings  # noqa: E402

MiB = 1 << 20
TOPOLOGY = TopologySettings(ack_wait_seconds=30.0)
PLANS = ("plan-a", "plan-b")


def settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        volumes=VolumeSettings(progress_interval_seconds=0.5),
        platform=PlatformSettings(local=LocalSettings()),
    )


async def replica(url: str, data_dir: str, name: str) -> None:
    """One volume-service replica until its stdin closes."""
    async with await Bus.connect(url, name=name, settings=TOPOLOGY) as bus:
        router = app.build_router(bus, settings(Path(data_dir)))
        stop = asyncio.Event()
        task = asyncio.create_task(router.run(bus, concurrency=4, stop=stop))
        await asyncio.to_thread(sys.stdin.read)
        stop.set()
        await task


def plain_copy(raw: Path, out: Path) -> float:
    """MiB/s of one unthrottled verified copy of a disk (the device's pace here)."""
    source = RawFileSource(str(raw))
    t0 = time.monotonic()
    result = engine.copy(source, RawFileSink(str(out), source.size), out.parent / "st-plain")
    source.close()
    return result.allocated / (time.monotonic() - t0) / MiB


def when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def wave(url: str, vms: dict[str, list[Ova]], mibps: float) -> dict[str, object]:
    shared = [
        Bandwidth(
            budget="esx1-net", account=account("esx1-net", "esx1"), bytes_per_second=mibps * MiB
        )
    ]
    async with await Bus.connect(url, name="bench", settings=TOPOLOGY) as bus:
        for plan, ovas in vms.items():
            for ova in ovas:
                made = create(ova, VolumeSource.IMPORTER, migration=f"m-{plan}", vm=ova.vm.id)
                await bus.publish(msgspec.structs.replace(made, plan=plan))
        await _wait(bus, volume.VolumesCreated, sum(len(v) for v in vms.values()))
        position = await bus.events_position()
        started = time.time()
        for i in range(max(len(v) for v in vms.values())):  # interleaved: both plans queue
            for plan, ovas in vms.items():
                if i < len(ovas):
                    cmd = copy(ovas[i], migration=f"m-{plan}", vm=ovas[i].vm.id)
                    await bus.publish(msgspec.structs.replace(cmd, plan=plan, bandwidth=shared))
        copied = await _wait(bus, volume.DisksCopied, sum(len(v) for v in vms.values()))
        records = [r async for r in bus.records(since=position + 1, follow=False)]
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    moved: dict[str, int] = dict.fromkeys(vms, 0)
    spans: dict[str, list[float]] = {}
    for r in records:
        if isinstance(r.message, volume.DiskProgress):  # the first says where a copy began
            first.setdefault(r.message.plan, when(r.envelope.time))
            spans.setdefault(r.message.vm, [when(r.envelope.time), 0.0])
        if isinstance(r.message, volume.DisksCopied):
            last[r.message.plan] = when(r.envelope.time)
            spans[r.message.vm][1] = when(r.envelope.time)
    t0 = min(first.values())
    for vm, (a, b) in sorted(spans.items(), key=lambda kv: kv[1]):
        print(f"    {vm}: {a - t0:6.2f} → {b - t0:6.2f} s", file=sys.stderr)
    # What crossed from the source: the bytes the copies read (a raw disk inside an OVA
    # has no holes to skip, so its zeros are read, and paced, too), not only those written.
    read: dict[tuple[str, str, str], int] = {}
    for r in records:
        if isinstance(r.message, volume.DiskProgress):
            read[(r.message.plan, r.message.vm, r.message.disk_id)] = r.message.total
    for (plan, _, _), total in read.items():
        moved[plan] += total
    assert len(copied) == len(read)
    return {"started": started, "first": first, "last": last, "moved": moved}


async def _wait(bus: Bus, kind: type, count: int, within: float = 900) -> list[object]:
    deadline = time.monotonic() + within
    while True:
        found = [m async for _, m in bus.events(follow=False)]
        failed = [m for m in found if isinstance(m, volume.VolumeFailed)]
        if failed:
            raise SystemExit(f"a copy failed: {failed[0]}")
        matching = [m for m in found if isinstance(m, kind)]
        if len(matching) >= count:
            return matching
        if time.monotonic() > deadline:
            raise SystemExit(f"{count} {kind.__name__} not seen in {within}s")
        await asyncio.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mibps", type=float, default=40.0, help="the host budget, MiB/s")
    parser.add_argument("--vms", type=int, default=3, help="VMs (one disk each) per plan")
    parser.add_argument("--disk-mib", type=int, default=128, help="disk size (half data)")
    parser.add_argument("--replica", nargs=3, metavar=("URL", "DATA_DIR", "NAME"))
    args = parser.parse_args()
    if args.replica:
        asyncio.run(replica(*args.replica))
        return
    with tempfile.TemporaryDirectory(prefix="bench-budgets-", dir=os.getcwd()) as tmp:
        root = Path(tmp)
        vms = {
            plan: [
                asyncio.run(
                    make_ova(root / "ova", f"{plan}-vm{i}", args.disk_mib * MiB, seed=i, raw=True)
                )
                for i in range(args.vms)
            ]
            for plan in PLANS
        }
        plain = plain_copy(vms["plan-a"][0].raws[0], root / "plain.img")
        with NatsServer(fsync_always=False) as server:
            server.start()

            async def topology() -> None:
                async with await Bus.connect(server.url, name="bench", settings=TOPOLOGY) as bus:
                    await declare(bus, TOPOLOGY, list(Service))

            asyncio.run(topology())
            replicas = [
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--replica",
                        server.url,
                        str(root / "data"),
                        f"r{i}",
                    ],
                    stdin=subprocess.PIPE,
                )
                for i in (1, 2)
            ]
            try:
                got = asyncio.run(wave(server.url, vms, args.mibps))
            finally:
                for proc in replicas:
                    assert proc.stdin is not None
                    proc.stdin.close()
                for proc in replicas:
                    proc.wait(timeout=60)
    report(args, plain, got)


def report(args: argparse.Namespace, plain: float, got: dict[str, object]) -> None:
    first, last = got["first"], got["last"]
    moved = got["moved"]
    assert isinstance(first, dict) and isinstance(last, dict) and isinstance(moved, dict)
    start, end = min(first.values()), max(last.values())
    total = sum(moved.values())
    aggregate = total / (end - start) / MiB
    both_from, both_to = max(first.values()), min(last.values())
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        f"budgets bench: two plans x {args.vms} VMs, one {args.disk_mib} MiB raw disk each "
        f"(half data), 2 volume-service replicas, one host budget of {args.mibps:g} MiB/s; "
        f"load avg {load} on {os.cpu_count()} CPUs",
        f"  unthrottled verified copy (one disk, same run): {plain:7.1f} MiB/s",
    ]
    for plan in PLANS:
        span = last[plan] - first[plan]
        lines.append(
            f"  {plan}: {moved[plan] / MiB:6.0f} MiB read in {span:6.2f} s = "
            f"{moved[plan] / span / MiB:6.1f} MiB/s"
        )
    lines += [
        f"  both running: {max(0.0, both_to - both_from):.2f} s of {end - start:.2f} s "
        f"(first data to last copy)",
        f"  aggregate:    {aggregate:7.1f} MiB/s  ({100 * (aggregate / args.mibps - 1):+.1f} % "
        f"of the budget; goal within 5 %)",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
