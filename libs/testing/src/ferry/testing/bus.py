"""Helpers for tests that drive the bus: sample commands, a background router, polling.

Tests poll for outcomes (``eventually``) instead of sleeping fixed times, so they
are as fast as the machine allows and never assert on speed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

from ferry.bus import Bus, Router
from ferry.proto import volume


def allocate(vm: str, namespace: str = "ns", migration: str = "m1") -> volume.AllocateDisks:
    return volume.AllocateDisks(plan="p", migration=migration, vm=vm, namespace=namespace)


def allocated(cmd: volume.AllocateDisks) -> volume.DisksAllocated:
    return volume.DisksAllocated(**cmd.reply())


class Running:
    """A router running in the background of a test, stopped on exit."""

    def __init__(self, router: Router, bus: Bus, **kwargs: object) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(router.run(bus, stop=self.stop, **kwargs))  # type: ignore[arg-type]

    async def __aenter__(self) -> Running:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=60)


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], within: float = 30.0, what: str = ""
) -> None:
    """Poll ``check`` (sync or async) until true; fail clearly after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within}s: {what or check.__name__}")


async def stream_count(bus: Bus, stream: str) -> int:
    info = await bus.js.stream_info(stream)
    return int(info.state.messages)
