"""Does adding conversion-service replicas add conversions in flight?

One private nats-server; N ConvertGuest commands (full mode, the test guest's
OVA, each VM with its own pre-allocated volume) are queued on the shared work
queue; then k real ``ferry-conversion-service`` processes (one conversion at a
time each, the default) drain it. Wall time from the first replica's start to
the last ``GuestConverted``, for k = 1 and k = 2, and their ratio.

On this project's 2-core machines the appliance runs under TCG and one
conversion already keeps about one core busy (QEMU's TCG thread) plus bursts
of a second (nbdkit, nbdcopy, qemu-img); the ratio is bounded by the cores
left, not by the service. The report prints the load average to show it.

Usage: python bench/conversion/run.py [--conversions 4] [--replicas 1,2]
       [--inspect] [--json]

``--inspect`` keeps the post-conversion virt-inspector check (a minute per VM
under TCG); by default the bench reports virt-v2v's own inspection.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ferry.bus import Bus, TopologySettings, declare
from ferry.proto.conversion import ConversionFailed, ConversionMode, ConvertGuest, GuestConverted
from ferry.proto.inventory import ProviderType, Vm, Volume
from ferry.proto.subjects import Service
from ferry.proto.volume import SourceRef
from ferry.providers.ova.provider import OvaProvider
from ferry.testing.nats import NatsServer

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGY = TopologySettings(ack_wait_seconds=30, max_deliver=2)
OVERHEAD = 64 << 20


@dataclass
class Round:
    replicas: int
    conversions: int
    seconds: float
    succeeded: int
    failed: list[str] = field(default_factory=list)
    per_conversion: list[float] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)


def test_guest() -> Any:
    name = "ferry_test_guest"
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests/guest/build_guest.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.ensure_guest()


def volumes_for(folder: Path, vm: Vm, index: int) -> list[Volume]:
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for number, disk in enumerate(vm.disks):
        path = folder / f"vm{index}-disk{number}.img"
        with path.open("wb") as handle:
            handle.truncate(disk.capacity + OVERHEAD)
        found.append(
            Volume(
                disk_id=disk.id,
                name=path.stem,
                size=disk.capacity + OVERHEAD,
                path=str(path),
                phase="Bound",
            )
        )
    return found


def replica_environment(url: str, data_dir: Path, inspect: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    env.update(
        FERRY_NATS__URL=url,
        FERRY_DATA_DIR=str(data_dir),
        FERRY_HTTP__PORT="0",
        FERRY_LOG__FORMAT="text",
        FERRY_BUS__ACK_WAIT_SECONDS=str(TOPOLOGY.ack_wait_seconds),
        FERRY_BUS__MAX_DELIVER=str(TOPOLOGY.max_deliver),
        FERRY_CONVERSION__VERIFY_WITH_INSPECTOR="true" if inspect else "false",
    )
    return env


async def one_round(replicas: int, conversions: int, inspect: bool, work: Path) -> Round:
    guest = test_guest()
    ova_dir = work / f"ova-{replicas}"
    ova_dir.mkdir(parents=True)
    shutil.copyfile(guest.ova, ova_dir / Path(guest.ova).name)
    (vm,) = await OvaProvider(ova_dir).inventory()
    server = NatsServer(work / f"nats-{replicas}").start()
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with await Bus.connect(server.url, name="bench", settings=TOPOLOGY) as bus:
            await declare(bus, TOPOLOGY, list(Service))
            for index in range(conversions):
                await bus.publish(
                    ConvertGuest(
                        plan="bench",
                        migration=f"bench-{replicas}",
                        vm=f"vm-{index}",
                        step="convert",
                        namespace="default",
                        mode=ConversionMode.FULL,
                        provider=SourceRef(provider="ova", type=ProviderType.OVA, url=str(ova_dir)),
                        inventory=vm,
                        volumes=volumes_for(work / f"volumes-{replicas}", vm, index),
                        timeout_seconds=3600,
                    )
                )
            started = time.monotonic()
            env = replica_environment(server.url, work / f"data-{replicas}", inspect)
            for number in range(replicas):
                log = (work / f"replica-{replicas}-{number}.log").open("wb")
                processes.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-m",
                        "ferry.conversion_service",
                        env=env,
                        stdout=log,
                        stderr=log,
                    )
                )
            outcomes: dict[str, GuestConverted | ConversionFailed] = {}
            async for _, message in bus.events(follow=True):
                if isinstance(message, GuestConverted | ConversionFailed):
                    outcomes[message.vm] = message
                    print(
                        f"  {message.vm}: {type(message).__name__} "
                        f"after {time.monotonic() - started:.0f}s",
                        flush=True,
                    )
                if len(outcomes) == conversions:
                    break
            seconds = time.monotonic() - started
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            await process.wait()
        server.close()
    done = [m for m in outcomes.values() if isinstance(m, GuestConverted)]
    return Round(
        replicas=replicas,
        conversions=conversions,
        seconds=round(seconds, 1),
        succeeded=len(done),
        failed=[m.reason for m in outcomes.values() if isinstance(m, ConversionFailed)],
        per_conversion=sorted(m.seconds for m in done),
        load_average=os.getloadavg(),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversions", type=int, default=4)
    parser.add_argument("--replicas", default="1,2")
    parser.add_argument("--inspect", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-conversion-", dir="/var/tmp") as tmp:
        for replicas in (int(r) for r in args.replicas.split(",")):
            print(f"{replicas} replica(s), {args.conversions} conversions…", flush=True)
            rounds.append(await one_round(replicas, args.conversions, args.inspect, Path(tmp)))
    if args.json:
        print(json.dumps([asdict(r) for r in rounds], indent=2))
        return
    print(f"\nconversion-service scaling ({os.cpu_count()} CPUs)")
    for r in rounds:
        per = ", ".join(f"{s:.0f}" for s in r.per_conversion)
        print(
            f"  {r.replicas} replica(s): {r.seconds:7.1f}s wall for {r.conversions} "
            f"({r.succeeded} ok) per-conversion [{per}]s load {r.load_average[0]:.1f}"
        )
        for reason in r.failed:
            print(f"    failed: {reason}")
    if len(rounds) >= 2 and rounds[-1].seconds:
        print(
            f"  speed-up {rounds[0].replicas}→{rounds[-1].replicas} replicas: "
            f"{rounds[0].seconds / rounds[-1].seconds:.2f}x (goal ≥ 1.6x on 2 cores)"
        )


if __name__ == "__main__":
    asyncio.run(main())
