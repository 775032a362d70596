"""What the bus library costs over bare nats-py, on one private nats-server.

Two measurements, each for Ferry's Router and for raw nats-py on the same
server in the same run:

* throughput: N messages published (pipelined, every publish waited for by
  the stream) while a consumer takes them and acks each; messages/s from the
  first publish to the last ack. The Router path adds CloudEvents envelopes,
  deterministic ids, decoding into msgspec structs, per-VM lanes and the
  observer hooks; with ``--results`` its handler also publishes one result
  event per command (the real publish -> handle -> publish -> ack loop);
* a third baseline, raw nats-py with the headers Ferry writes (the same names,
  values of the same lengths), separates the cost of the headers (checked and
  parsed in Python by nats-py) from the cost of the library;
* latency: a fixed publish rate for some seconds; time from just before the
  publish call to the start of the handler, p50/p99/max. The router's is split
  in two: publish -> the fetch that returned the message (server, nats-py and
  the event loop, the same path raw nats-py takes) and that fetch -> the
  handler's start (the dispatcher: lanes, decoding, middleware).

Both server settings are run and reported by default: nats' default fsync
interval, and the production one (``sync_interval: always``, every write
fsynced: the disk, not the library, sets the pace). ``--sync`` picks one.

Usage: python bench/bus/run.py [-n 20000] [--rate 500] [--seconds 10]
       [--concurrency 100] [--rounds 2] [--results] [--sync both|default|always] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import nats
from nats.js import api

from ferry.bus import Bus, Context, Router, TopologySettings, declare
from ferry.bus.consumer import Consumer
from ferry.proto import subjects, volume
from ferry.proto.subjects import Service
from ferry.testing.nats import NatsServer

RAW_STREAM = "BENCH_RAW"
RAW_SUBJECT = "bench.raw"
SETTINGS = TopologySettings(ack_wait_seconds=30, max_deliver=5)


@dataclass
class Throughput:
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


@dataclass
class Latency:
    messages: int
    rate: float
    p50_ms: float
    p99_ms: float
    max_ms: float


_RUN = itertools.count()
# stream sequence -> when (time_ns) the router's fetch returned it, for the latency split;
# recorded in the latency runs only (the throughput runs measure the router alone)
_FETCHED: dict[int, int] = {}
_TIMING = [False]
_fetch = Consumer._fetch


async def _timed_fetch(self: Consumer, src: Any, batch: int) -> list[Any]:
    msgs = await _fetch(self, src, batch)
    if _TIMING[0]:
        now = time.time_ns()
        for msg in msgs:
            _FETCHED[msg.metadata.sequence.stream] = now
    return msgs


Consumer._fetch = _timed_fetch  # type: ignore[method-assign]


def _command(run: int, i: int, sent_ns: int = 0) -> volume.AllocateDisks:
    # Distinct content per message and run (deterministic ids would dedupe
    # repeats); 1000 VMs so that per-VM ordering leaves room for parallelism.
    return volume.AllocateDisks(
        plan="bench", migration=f"m{run}", vm=f"vm{i % 1000}", namespace=f"{i}:{sent_ns}"
    )


def _latency(samples_ns: list[int], rate: float) -> Latency:
    ms = sorted(s / 1e6 for s in samples_ns)
    q = statistics.quantiles(ms, n=100) if len(ms) >= 2 else ms * 99
    return Latency(len(ms), rate, round(q[49], 3), round(q[98], 3), round(ms[-1], 3))


# -- Ferry Router ------------------------------------------------------------------


async def _router_run(
    url: str, n: int, concurrency: int, results: bool, paced: float | None
) -> tuple[Throughput, list[int], list[int]]:
    async with await Bus.connect(url, name="bench", settings=SETTINGS) as bus:
        await declare(bus, SETTINGS, [Service.VOLUME])
        await bus.js.purge_stream(subjects.command_stream(Service.VOLUME))
        router = Router(Service.VOLUME)
        done = asyncio.Event()
        latencies: list[int] = []
        dispatch: list[int] = []  # fetch returned -> handler start
        count = 0

        @router.handler(volume.AllocateDisks)
        async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated | None:
            nonlocal count
            sent = int(cmd.namespace.split(":")[1])
            if sent:
                now = time.time_ns()
                latencies.append(now - sent)
                sequence = ctx._job.sequence  # (consumer, stream sequence)
                fetched = _FETCHED.pop(sequence[1], 0) if sequence else 0
                if fetched:
                    dispatch.append(now - fetched)
            count += 1
            if count >= n:
                done.set()
            if results:
                return volume.DisksAllocated(plan=cmd.plan, migration=cmd.migration, vm=cmd.vm)
            return None

        stop = asyncio.Event()
        run = next(_RUN)
        _TIMING[0] = paced is not None
        _FETCHED.clear()
        runner = asyncio.create_task(router.run(bus, concurrency=concurrency, stop=stop))
        await asyncio.sleep(0.5)  # consumer bound before the clock starts
        start = time.perf_counter()
        if paced is None:
            for chunk in range(0, n, 1000):
                await bus.publish_many(_command(run, i) for i in range(chunk, min(n, chunk + 1000)))
        else:
            await _paced(n, paced, lambda i: bus.publish(_command(run, i, time.time_ns())))
        await done.wait()
        elapsed = time.perf_counter() - start
        stop.set()
        await runner
        # Acks are asynchronous: give the server a moment to apply the last ones.
        left = -1
        for _ in range(100):
            stream = subjects.command_stream(Service.VOLUME)
            left = (await bus.js.stream_info(stream)).state.messages
            if not left:
                break
            await asyncio.sleep(0.1)
        if left:
            raise RuntimeError(f"router bench left {left} unacknowledged commands")
        return Throughput(n, elapsed), latencies, dispatch


# -- raw nats-py -------------------------------------------------------------------


def _headers(i: int, run: int) -> dict[str, str] | None:
    """The headers Ferry writes for the router's commands, for the raw+headers baseline:
    the same names and values of the same lengths (a type-tagged id of 32 hex digits, a
    time to the microsecond, ``ce-datacontenttype``), which nats-py checks and parses
    character by character on both sides."""
    if run < 0:
        return None
    msg_id = f"volume.allocate_disks.v1:{run:08x}{i:024x}"
    return {
        "ce-id": msg_id,
        "ce-source": "ferry/bench",
        "ce-type": "volume.allocate_disks.v1",
        "ce-subject": f"bench/m{run}/vm{i % 1000}",
        "ce-time": "2026-01-01T00:00:00.000000Z",
        "ce-specversion": "1.0",
        "ce-datacontenttype": "application/json",
        "Nats-Msg-Id": msg_id,
    }


async def _raw_run(
    url: str, n: int, batch: int, paced: float | None, with_headers: bool = False
) -> tuple[Throughput, list[int]]:
    run = next(_RUN) if with_headers else -1
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(
        name=RAW_STREAM, subjects=[f"{RAW_SUBJECT}.>"], retention=api.RetentionPolicy.WORK_QUEUE
    )
    await js.purge_stream(RAW_STREAM)
    await js.add_consumer(
        RAW_STREAM,
        api.ConsumerConfig(durable_name="raw", ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30),
    )
    sub = await js.pull_subscribe_bind("raw", stream=RAW_STREAM)
    latencies: list[int] = []
    received = 0

    async def consume() -> None:
        nonlocal received
        while received < n:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except TimeoutError:
                continue
            for msg in msgs:
                sent = int(msg.data.split(b":")[1])
                if sent:
                    latencies.append(time.time_ns() - sent)
                await msg.ack()
                received += 1

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    start = time.perf_counter()
    if paced is None:
        for chunk in range(0, n, 1000):
            futures = [
                await js.publish_async(
                    f"{RAW_SUBJECT}.{i % 1000}", f"{i}:0".encode(), headers=_headers(i, run)
                )
                for i in range(chunk, min(n, chunk + 1000))
            ]
            await asyncio.gather(*futures)
    else:

        async def one(i: int) -> Any:
            return await js.publish(
                f"{RAW_SUBJECT}.{i % 1000}",
                f"{i}:{time.time_ns()}".encode(),
                headers=_headers(i, run),
            )

        await _paced(n, paced, one)
    await consumer
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    await nc.drain()
    return Throughput(n, elapsed), latencies


async def _paced(n: int, rate: float, publish: Any) -> None:
    """Publish message i at start + i/rate (waiting for each stream ack)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i in range(n):
        delay = start + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await publish(i)


# -- report ----------------------------------------------------------------------


async def bench(args: argparse.Namespace, fsync: bool) -> dict[str, Any]:
    with NatsServer(fsync_always=fsync) as server:
        # Alternate the two and keep each one's best round: the machine is shared.
        raw_rounds, hdr_rounds, ferry_rounds = [], [], []
        for _ in range(args.rounds):
            raw_rounds.append((await _raw_run(server.url, args.n, args.concurrency, None))[0])
            hdr_rounds.append(
                (await _raw_run(server.url, args.n, args.concurrency, None, with_headers=True))[0]
            )
            ferry_rounds.append(
                (await _router_run(server.url, args.n, args.concurrency, args.results, None))[0]
            )
        raw_tp = max(raw_rounds, key=lambda t: t.rate)
        hdr_tp = max(hdr_rounds, key=lambda t: t.rate)
        ferry_tp = max(ferry_rounds, key=lambda t: t.rate)
        paced_n = int(args.rate * args.seconds)
        _, raw_lat = await _raw_run(server.url, paced_n, args.concurrency, args.rate)
        _, ferry_lat, dispatch = await _router_run(
            server.url, paced_n, args.concurrency, args.results, args.rate
        )
    return {
        "n": args.n,
        "rounds": args.rounds,
        "fsync_every_write": fsync,
        "concurrency": args.concurrency,
        "router_publishes_results": args.results,
        "throughput": {
            "raw_msgs_per_s": round(raw_tp.rate),
            "raw_with_ce_headers_msgs_per_s": round(hdr_tp.rate),
            "router_msgs_per_s": round(ferry_tp.rate),
            "router_over_raw": round(ferry_tp.rate / raw_tp.rate, 3),
            "router_over_raw_with_headers": round(ferry_tp.rate / hdr_tp.rate, 3),
            "raw_seconds": round(raw_tp.seconds, 3),
            "router_seconds": round(ferry_tp.seconds, 3),
        },
        "latency": {
            "raw": asdict(_latency(raw_lat, args.rate)),
            "router": asdict(_latency(ferry_lat, args.rate)),
            "router_fetch_to_handler": asdict(_latency(dispatch, args.rate)),
        },
    }


def render(report: dict[str, Any]) -> str:
    tp, lat = report["throughput"], report["latency"]
    lines = [
        f"bus benchmark: N={report['n']} (best of {report['rounds']}), "
        f"concurrency/batch={report['concurrency']}, "
        f"fsync every write: {report['fsync_every_write']}, "
        f"router handler publishes a result: {report['router_publishes_results']}",
        "",
        "throughput (publish -> consume -> ack, first publish to last ack)",
        f"  raw nats-py   {tp['raw_msgs_per_s']:>8} msg/s  ({tp['raw_seconds']} s)",
        f"  raw + the same headers {tp['raw_with_ce_headers_msgs_per_s']:>8} msg/s",
        f"  ferry Router  {tp['router_msgs_per_s']:>8} msg/s  ({tp['router_seconds']} s)",
        f"  ratio router/raw  {tp['router_over_raw']}   "
        f"router/(raw + headers)  {tp['router_over_raw_with_headers']}",
        "",
        f"latency, publish -> handler start, at {lat['router']['rate']:.0f} msg/s "
        f"({lat['router']['messages']} messages)",
        "                  p50 ms   p99 ms   max ms   (dispatcher: the router's share, from"
        " the fetch that returned a message to its handler's start)",
    ]
    for name, label in (
        ("raw", "raw"),
        ("router", "router"),
        ("router_fetch_to_handler", "  dispatcher"),
    ):
        row = lat[name]
        lines.append(
            f"  {label:<14} {row['p50_ms']:>7.2f}  {row['p99_ms']:>7.2f}  {row['max_ms']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="messages for the throughput run")
    parser.add_argument("--rate", type=float, default=500.0, help="msg/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency run")
    parser.add_argument("--concurrency", type=int, default=100, help="router slots = raw batch")
    parser.add_argument("--results", action="store_true", help="router handler publishes events")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds, best kept")
    parser.add_argument(
        "--sync",
        choices=("both", "default", "always"),
        default="both",
        help="server fsync: nats' default interval, every write (production), or both",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    modes = {"both": (False, True), "default": (False,), "always": (True,)}[args.sync]
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    reports = [asyncio.run(bench(args, fsync)) for fsync in modes]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(f"# load avg {load} at the start, on {len(os.sched_getaffinity(0))} CPUs")
        print("\n\n".join(render(r) for r in reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
