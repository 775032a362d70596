"""Crashes: a worker or the server killed with SIGKILL; work is redelivered, effects happen once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

from ferry.bus import Bus, Context, Router
from ferry.proto import subjects, volume
from ferry.proto.subjects import Service
from ferry.testing.bus import Running, allocate, allocated, eventually, stream_count
from ferry.testing.nats import NatsServer

CHILD = Path(__file__).with_name("child_router.py")


def _spawn(url: str, workdir: Path, hold: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), url, str(workdir), str(hold)],
        stdout=subprocess.DEVNULL,
        stderr=(workdir / f"child-{time.monotonic_ns()}.err").open("wb"),
    )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_killed_worker_is_redelivered_and_effect_happens_once(
    bus: Bus, nats_url: str, tmp_path: Path
) -> None:
    # Given a command and a worker process whose handler holds it for a long time
    ack = await bus.publish(allocate("vm-crash"))
    first = _spawn(nats_url, tmp_path, hold=60)
    try:
        await eventually(lambda: len(_lines(tmp_path / "starts.log")) == 1, what="first start")

        # When that worker is killed with SIGKILL in the middle of the handler
        first.kill()
        first.wait(10)
        assert _lines(tmp_path / "effects.log") == []

        # and another worker starts
        second = _spawn(nats_url, tmp_path, hold=0)
        try:
            # Then the command is redelivered to it and completes
            async def completed() -> bool:
                return (
                    await stream_count(bus, subjects.command_stream(subjects.Service.VOLUME)) == 0
                )

            await eventually(completed, within=60)
        finally:
            second.terminate()
            second.wait(20)
    finally:
        if first.poll() is None:
            first.kill()

    starts = _lines(tmp_path / "starts.log")
    effects = _lines(tmp_path / "effects.log")
    assert len(starts) == 2 and all(ack.id in s for s in starts)
    assert starts[0].split()[2] != starts[1].split()[2]  # two different processes
    assert effects == [f"effect {ack.id} {second.pid}"]
    # and exactly one result event was published
    results = [m async for _, m in bus.events(follow=False) if isinstance(m, volume.DisksAllocated)]
    assert len(results) == 1 and results[0].vm == "vm-crash"


async def test_router_survives_a_server_crash(bus: Bus, nats_server: NatsServer) -> None:
    # Given a running router that has handled one command
    router = Router(Service.VOLUME)
    handled: list[str] = []

    @router.handler(volume.AllocateDisks)
    async def handle(cmd: volume.AllocateDisks, ctx: Context) -> volume.DisksAllocated:
        handled.append(cmd.vm)
        return allocated(cmd)

    async with Running(router, bus):
        await bus.publish(allocate("before"))
        await eventually(lambda: handled == ["before"], what="first command handled")

        # When the server is killed with SIGKILL and comes back on the same store
        nats_server.kill()
        await asyncio.sleep(0.5)
        nats_server.restart()
        await eventually(lambda: bus.connected, within=30, what="reconnected")

        # Then commands published afterwards are still handled by the same router
        await bus.publish(allocate("after"))
        await eventually(lambda: handled == ["before", "after"], within=30, what="after restart")

    results = [
        m.vm async for _, m in bus.events(follow=False) if isinstance(m, volume.DisksAllocated)
    ]
    assert results == ["before", "after"]
