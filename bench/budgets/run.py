"""Bench: two plans' copies sharing one host's bandwidth budget of N MiB/s.

Each plan is its own process (as two data-mover replicas would be) copying its
disks one after another with Ferry's copy engine (raw -> raw, verified), every
chunk paced by one :class:`ferry.bus.rate.SharedRate` on a private nats-server.
Reported, in the same run: one unthrottled copy (what the device gives, so N is
seen to be below it), then the two plans under the budget: the aggregate rate
while both ran, each plan's own rate, and the aggregate's distance from N.

Usage: .venv/bin/python bench/budgets/run.py [--mibps 40] [--disks 3] [--disk-mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ferry.bus import Bus, TopologySettings, declare
from ferry.bus.rate import SharedRate
from ferry.platform.copy import engine
from ferry.platform.copy.sink import RawFileSink
from ferry.platform.copy.source import RawFileSource
from ferry.proto.subjects import Service
from ferry.testing.nats import NatsServer

MiB = 1 << 20
TOPOLOGY = TopologySettings()


def make_disk(path: Path, size_mib: int) -> None:
    """Half data (every other MiB, random), half holes: the copy reads what is allocated."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
        for i in range(0, size_mib, 2):
            f.seek(i * MiB)
            f.write(os.urandom(MiB))


def copy_one(src: Path, dst: Path, state: Path, throttle: engine.Options | None) -> int:
    source = RawFileSource(str(src))
    sink = RawFileSink(str(dst), source.size)
    result = engine.copy(source, sink, state, throttle or engine.Options())
    return result.allocated


async def child(url: str, plan: str, mibps: float, disks: list[str], out: str) -> None:
    async with await Bus.connect(url, name=f"mover-{plan}", settings=TOPOLOGY) as bus:
        rate = SharedRate(bus, "host-esx1", mibps * MiB, period=0.5)
        options = engine.Options(throttle=rate.blocking(asyncio.get_running_loop()))
        moved, start = 0, time.time()
        for i, disk in enumerate(disks):
            moved += await asyncio.to_thread(
                copy_one, Path(disk), Path(out) / f"{plan}-{i}.img", Path(out) / f"st-{plan}-{i}",
                options,
            )  # fmt: skip
        end = time.time()
    print(json.dumps({"plan": plan, "start": start, "end": end, "bytes": moved}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mibps", type=float, default=40.0, help="the host budget, MiB/s")
    parser.add_argument("--disks", type=int, default=3, help="disks per plan")
    parser.add_argument("--disk-mib", type=int, default=64, help="size of each (half data)")
    parser.add_argument("--child", nargs=4, metavar=("URL", "PLAN", "DISKS_JSON", "OUT"))
    args = parser.parse_args()
    if args.child:
        url, plan, disks, out = args.child
        asyncio.run(child(url, plan, args.mibps, json.loads(disks), out))
        return
    with tempfile.TemporaryDirectory(prefix="bench-budgets-", dir=os.getcwd()) as tmp:
        root = Path(tmp)
        plans = {p: [root / f"src-{p}-{i}.img" for i in range(args.disks)] for p in ("a", "b")}
        for paths in plans.values():
            for path in paths:
                make_disk(path, args.disk_mib)
        t0 = time.monotonic()
        plain = copy_one(plans["a"][0], root / "plain.img", root / "st-plain", None)
        plain_rate = plain / (time.monotonic() - t0) / MiB
        with NatsServer(fsync_always=False) as server:
            server.start()

            async def topology() -> None:
                async with await Bus.connect(server.url, name="bench", settings=TOPOLOGY) as bus:
                    await declare(bus, TOPOLOGY, list(Service))

            asyncio.run(topology())
            procs = [
                subprocess.Popen(
                    [
                        sys.executable, __file__, "--mibps", str(args.mibps), "--child",
                        server.url, plan, json.dumps([str(p) for p in paths]), str(root),
                    ],
                    stdout=subprocess.PIPE,
                )
                for plan, paths in plans.items()
            ]  # fmt: skip
            results = [json.loads(p.communicate(timeout=900)[0]) for p in procs]
    both_from = max(r["start"] for r in results)
    both_to = min(r["end"] for r in results)
    first, last = min(r["start"] for r in results), max(r["end"] for r in results)
    total = sum(r["bytes"] for r in results)
    aggregate = total / (last - first) / MiB
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        f"budgets bench: two plans, {args.disks} x {args.disk_mib} MiB raw disks each "
        f"(half data), one host budget of {args.mibps:g} MiB/s; load avg {load} "
        f"on {os.cpu_count()} CPUs",
        f"  unthrottled copy (one disk, same run):  {plain_rate:7.1f} MiB/s",
    ]
    for r in results:
        rate = r["bytes"] / (r["end"] - r["start"]) / MiB
        lines.append(
            f"  plan {r['plan']}: {r['bytes'] / MiB:6.0f} MiB in {r['end'] - r['start']:5.2f} s"
            f" = {rate:6.1f} MiB/s"
        )
    lines += [
        f"  both running: {max(0.0, both_to - both_from):.2f} s of {last - first:.2f} s",
        f"  aggregate:    {aggregate:7.1f} MiB/s  ({100 * (aggregate / args.mibps - 1):+.1f} % "
        f"of the budget; goal within 5 %)",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
