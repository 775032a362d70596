"""Bench: N VMs over P plans with instant steps through the real migration-controller.

The controller runs as its own process (or as R replicas, active / standby)
against a private nats-server; the volume, conversion and vm services are
replaced by handlers in this process that complete each step at once. A global
Budget admits ``--budget`` VMs at a time across all plans. Reported:

* the time until every VM's first service command was dispatched, and until
  every migration completed;
* per-VM overhead (VM started -> VM completed, all of it controller and bus,
  since the steps themselves take no time): p50 / p95 / max;
* per-step turnaround: a service's result published -> the next command received;
* each replica's peak resident memory;
* the size of every stream (KV buckets included) at the end.

Usage: .venv/bin/python bench/controller/run.py [--vms 10000] [--plans 20] [--budget 500]
       [--replicas 1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from ferry.bus import Bus, Context, Router, declare
from ferry.proto import conversion, migration, objects, subjects, vm, volume
from ferry.proto.base import Command
from ferry.proto.inventory import Inspection, Volume
from ferry.proto.subjects import Bucket, Service
from ferry.testing.nats import NatsServer

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from controller_child import TOPOLOGY  # noqa: E402


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": objects.API_VERSION,
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def plan_docs(n: int, plans: int, max_in_flight: int, budget: int) -> list[dict[str, Any]]:
    pair = {"source": {"name": "src"}, "destination": {"name": "host"}}
    nets = [{"source": {"name": "net1"}, "destination": {"type": "pod"}}]
    disks = [{"source": {"name": "ds1"}, "destination": {"storageClass": "local"}}]
    out = [
        _doc("Provider", "src", {"type": "ova", "url": "/srv/ova"}),
        _doc("Provider", "host", {"type": "kubevirt"}),
        _doc("NetworkMap", "net", {"provider": pair, "map": nets}),
        _doc("StorageMap", "disks", {"provider": pair, "map": disks}),
        _doc("Budget", "wave", {"scope": "global", "maxVms": budget}),
    ]
    for p in range(plans):
        ids = [f"vm-{i:05d}" for i in range(p, n, plans)]
        out.append(
            _doc(
                "Plan",
                f"p{p:02d}",
                {
                    "provider": pair,
                    "map": {"network": {"name": "net"}, "storage": {"name": "disks"}},
                    "maxInFlight": max_in_flight,
                    "maxInFlightPerHost": max_in_flight,
                    "vms": [{"id": i} for i in ids],
                },
            )
        )
        out.append(_doc("Migration", f"m{p:02d}", {"plan": {"name": f"p{p:02d}"}}))
    return out


class Services:
    """Instant handlers; they note when each command arrived and each result left."""

    def __init__(self) -> None:
        self.first_command: dict[str, float] = {}
        self.turnaround: list[float] = []
        self._last_result: dict[str, float] = {}
        self.commands = 0

    def _arrived(self, cmd: Command) -> None:
        now = time.monotonic()
        self.commands += 1
        self.first_command.setdefault(cmd.vm, now)
        if cmd.vm in self._last_result:
            self.turnaround.append(now - self._last_result.pop(cmd.vm))

    def _left(self, cmd: Command) -> None:
        self._last_result[cmd.vm] = time.monotonic()

    def routers(self) -> list[Router]:
        vol, conv, vms = Router(Service.VOLUME), Router(Service.CONVERSION), Router(Service.VM)

        def ids(c: Command) -> dict[str, str]:
            return {"plan": c.plan, "migration": c.migration, "vm": c.vm}

        @vol.handler(volume.CreateVolumes)
        async def create(c: volume.CreateVolumes, ctx: Context) -> volume.VolumesCreated:
            self._arrived(c)
            vols = [Volume(disk_id=t.disk_id, name=t.disk_id, size=1 << 30) for t in c.targets]
            self._left(c)
            return volume.VolumesCreated(**ids(c), step=c.step, volumes=vols)

        @vol.handler(volume.AllocateDisks)
        async def allocate(c: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
            self._arrived(c)
            self._left(c)
            return volume.DisksAllocated(**ids(c), step=c.step)

        @conv.handler(conversion.ConvertGuest)
        async def convert(c: conversion.ConvertGuest, ctx: Context) -> conversion.GuestConverted:
            self._arrived(c)
            self._left(c)
            return conversion.GuestConverted(
                **ids(c), step=c.step, inspection=Inspection(), volumes=c.volumes
            )

        @vms.handler(vm.CreateVm)
        async def create_vm(c: vm.CreateVm, ctx: Context) -> vm.VmCreated:
            self._arrived(c)
            self._left(c)
            return vm.VmCreated(**ids(c), step=c.step, name=c.target_name, namespace=c.namespace)

        @vms.handler(vm.PowerOn)
        async def power_on(c: vm.PowerOn, ctx: Context) -> vm.VmRunning:
            self._arrived(c)
            self._left(c)
            return vm.VmRunning(**ids(c), step=c.step, name=c.target_name)

        return [vol, conv, vms]


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def stream_sizes(bus: Bus) -> list[tuple[str, int, int]]:
    out = []
    for info in await bus.js.streams_info():
        out.append((info.config.name or "?", info.state.messages, info.state.bytes))
    return sorted(out)


async def bench(
    n: int, plans: int, max_in_flight: int, budget: int, concurrency: int, replicas: int
) -> None:
    with NatsServer(fsync_always=False) as server:
        server.start()
        async with await Bus.connect(server.url, name="bench", settings=TOPOLOGY) as bus:
            await declare(bus, TOPOLOGY, list(Service))
            store = bus.kv(Bucket.OBJECTS, dict)
            for doc in plan_docs(n, plans, max_in_flight, budget):
                obj = objects.parse_object(doc, "bench")
                await store.put(subjects.object_key(obj.KIND, obj.name), objects.to_document(obj))
            children = [
                subprocess.Popen(
                    [
                        sys.executable,
                        os.environ.get("FERRY_BENCH_CHILD", str(HERE / "controller_child.py")),
                        server.url,
                        str(n),
                        str(concurrency),
                    ],
                    stdout=subprocess.PIPE,
                )
                for _ in range(replicas)
            ]
            for child in children:
                assert child.stdout is not None
                assert (await asyncio.to_thread(child.stdout.readline)).startswith(b"ready")
            procs = [psutil.Process(c.pid) for c in children]
            idle = [p.memory_info().rss for p in procs]
            peak = list(idle)
            services = Services()
            stop = asyncio.Event()
            runners = [
                asyncio.create_task(r.run(bus, concurrency=256, stop=stop, fetch_wait=0.1))
                for r in services.routers()
            ]
            completed: set[str] = set()
            done = asyncio.Event()
            t0 = time.monotonic()
            for p in range(plans):
                await bus.publish(
                    migration.StartMigration(plan=f"p{p:02d}", migration=f"m{p:02d}", vm="*")
                )

            async def watch() -> None:
                async for _, msg in bus.events(subjects.events_of(Service.CONTROLLER), follow=True):
                    if isinstance(msg, migration.MigrationRejected):
                        raise SystemExit(f"migration {msg.migration} rejected: {msg.reasons}")
                    if isinstance(msg, migration.MigrationCompleted):
                        completed.add(msg.migration)
                        if len(completed) == plans:
                            done.set()
                            return

            watcher = asyncio.create_task(watch())
            while not done.is_set():
                if watcher.done():
                    watcher.result()
                peak = [max(m, p.memory_info().rss) for m, p in zip(peak, procs, strict=True)]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.2)
                if time.monotonic() - t0 > 1800:
                    raise SystemExit("the migrations did not complete within 1800 s")
            total = time.monotonic() - t0
            peak = [max(m, p.memory_info().rss) for m, p in zip(peak, procs, strict=True)]
            stop.set()
            await asyncio.gather(*runners, watcher, return_exceptions=True)
            sizes = await stream_sizes(bus)
            for child in children:
                child.terminate()
                child.wait(30)
            states = bus.kv(Bucket.VMS, dict)
            overheads, statuses = [], []
            from datetime import datetime

            def ts(v: str) -> float:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()

            for key in await states.keys():
                entry = await states.get(key)
                assert entry is not None
                s = entry.value
                statuses.append(s["status"])
                overheads.append(ts(s["ended"]) - ts(s["started"]))
    dispatched = (
        max(services.first_command.values()) - t0 if services.first_command else float("nan")
    )
    turn = services.turnaround
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    lines = [
        f"controller bench: {n} VMs in {plans} plans, global budget {budget} VMs, "
        f"{replicas} replica(s), controller concurrency {concurrency}; load avg {load} "
        f"on {os.cpu_count()} CPUs",
        f"  succeeded:                        {statuses.count('Succeeded')}/{n}",
        f"  all VMs dispatched (1st command): {dispatched:.2f} s",
        f"  all migrations completed:         {total:.2f} s  ({services.commands} commands)",
        f"  per-VM overhead (start -> end):   p50 {pct(overheads, 50):.2f} s   "
        f"p95 {pct(overheads, 95):.2f} s   max {max(overheads):.2f} s",
        f"  per-step turnaround:              p50 {pct(turn, 50) * 1000:.1f} ms   "
        f"p95 {pct(turn, 95) * 1000:.1f} ms",
    ]
    for i, (low, high) in enumerate(zip(idle, peak, strict=True)):
        lines.append(
            f"  replica {i} RSS:                    idle {low / 2**20:.0f} MiB, "
            f"peak {high / 2**20:.0f} MiB"
        )
    lines.append("  streams at the end (messages, MiB):")
    for name, msgs, size in sizes:
        lines.append(f"    {name:<28} {msgs:>8} {size / 2**20:>9.1f}")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--plans", type=int, default=1)
    parser.add_argument("--max-in-flight", type=int, default=1000, help="each plan's maxInFlight")
    parser.add_argument("--budget", type=int, default=500, help="global Budget: VMs at once")
    parser.add_argument("--replicas", type=int, default=1, help="controller replicas")
    parser.add_argument("--concurrency", type=int, default=64, help="controller router concurrency")
    args = parser.parse_args()
    asyncio.run(
        bench(
            args.vms, args.plans, args.max_in_flight, args.budget, args.concurrency, args.replicas
        )
    )


if __name__ == "__main__":
    main()
