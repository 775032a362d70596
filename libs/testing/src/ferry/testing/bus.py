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


class Observed:
    """A router's observer that keeps what the runtime's metrics would count: every call
    in order (``log``), the messages' outcomes alone (``calls``), the most messages in
    flight at once and the queue depths reported (consumer, waiting)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, object]] = []
        self.calls: list[tuple[str, str]] = []
        self.max_in_flight = 0
        self.depths: list[tuple[str, int]] = []

    def _outcome(self, call: tuple[str, str]) -> None:
        self.calls.append(call)
        self.log.append(call)

    def handled(self, type: str, seconds: float) -> None:
        self._outcome(("handled", type))

    def failed(self, type: str, reason: str) -> None:
        self._outcome(("failed", reason))

    def redelivered(self, type: str) -> None:
        self._outcome(("redelivered", type))

    def in_flight(self, n: int) -> None:
        self.log.append(("in_flight", n))
        self.max_in_flight = max(self.max_in_flight, n)

    def waiting(self, consumer: str, n: int) -> None:
        self.log.append(("waiting", n))
        self.depths.append((consumer, n))


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
