"""A volume-service router in its own process, for tests that kill -9 a worker.

Its handler for ``AllocateDisks`` is idempotent the way real handlers are: it
looks before it acts. It records "start <id> <pid>" in ``starts.log``, holds
for ``--hold`` seconds (long enough for the test to kill it), then performs its
effect at most once: it creates ``effect.<id>`` in the OBJECTS bucket and only
if that create wins appends "effect <id>" to ``effects.log``.

Usage: python child_router.py URL WORKDIR HOLD_SECONDS
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
from pathlib import Path

import msgspec

from ferry.bus import Bus, Conflict, Context, Router, TopologySettings
from ferry.proto import volume
from ferry.proto.subjects import Bucket, Service

SETTINGS = TopologySettings(ack_wait_seconds=2.0, max_deliver=5)


class Effect(msgspec.Struct, frozen=True):
    pid: int


def _append(path: Path, line: str) -> None:
    with path.open("a") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


async def main(url: str, workdir: Path, hold: float) -> None:
    router = Router(Service.VOLUME)

    @router.handler(volume.AllocateDisks)
    async def allocate(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        msg_id = ctx.envelope.id
        _append(workdir / "starts.log", f"start {msg_id} {os.getpid()}")
        await asyncio.sleep(hold)
        key = "effect." + hashlib.sha256(msg_id.encode()).hexdigest()[:16]
        try:
            await ctx.bus.kv(Bucket.OBJECTS, Effect).create(key, Effect(pid=os.getpid()))
            _append(workdir / "effects.log", f"effect {msg_id} {os.getpid()}")
        except Conflict:
            pass  # done by an earlier delivery: nothing to do again
        return volume.DisksAllocated(plan=cmd.plan, migration=cmd.migration, vm=cmd.vm)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with await Bus.connect(url, name="child", settings=SETTINGS) as bus:
        _append(workdir / "ready.log", f"ready {os.getpid()}")
        await router.run(bus, concurrency=2, stop=stop, grace_seconds=1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])))
