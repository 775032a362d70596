"""A bandwidth budget shared by every process that moves bytes under it.

A Budget's ``bandwidthMiBps`` holds for all importers, populators and copies
together, wherever they run, so no process can keep the bucket to itself. The
bucket is one key in the locks bucket (``rate.<budget>``): the current window
(``period`` seconds of wall-clock time) and the bytes granted in it. A mover
asks for a slice before it moves it; the grant is a compare-and-set on the
key's revision, so grants from every replica add up to at most ``rate x
period`` per window (a slice larger than a whole window is granted alone in an
empty one, else it could never move), and within a window they keep pace with
the clock, so its first mover cannot take all of it in a burst. A mover that
finds the budget spent sleeps until it has room; movers share it first come,
first served.

The cost is one read and one write per slice: with 4 MiB slices at 1 GiB/s
that is 256 grants a second across all movers. Expiry is wall-clock time, so
the movers' clocks are assumed in step (NTP). The measured rate of a budget is
what :meth:`SharedRate.measured` says this process moved under it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ferry.bus.errors import Conflict
from ferry.proto.subjects import Bucket

if TYPE_CHECKING:
    from ferry.bus.connection import Bus


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    window: float  # start of the window, unix time
    granted: int  # bytes granted in it, by every process


def key(budget: str) -> str:
    return f"rate.{budget}"


class SharedRate:
    def __init__(
        self,
        bus: Bus,
        budget: str,
        bytes_per_second: float,
        *,
        period: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = bus.kv(Bucket.LOCKS, Grant)
        self._key = key(budget)
        self.rate = bytes_per_second
        self._period = period
        self._clock = clock
        self.moved = 0
        self._first = 0.0

    async def take(self, nbytes: int) -> float:
        """Wait until ``nbytes`` may move under the budget; the window they were granted in."""
        cap = self.rate * self._period
        while True:
            now = self._clock()
            window = math.floor(now / self._period) * self._period
            entry = await self._kv.get(self._key)
            current = entry.value if entry is not None else None
            granted = current.granted if current is not None and current.window == window else 0
            # Within a window grants keep pace with the clock (at most one slice ahead):
            # else the first mover of a window would take all of it in a burst.
            if granted and (granted + nbytes > cap or granted > self.rate * (now - window)):
                wake = min(window + self._period, window + granted / self.rate)
                await asyncio.sleep(max(0.001, wake - self._clock()))
                continue
            grant = Grant(window=window, granted=granted + nbytes)
            try:
                if entry is None:
                    await self._kv.create(self._key, grant)
                else:
                    await self._kv.update(self._key, grant, entry.revision)
            except Conflict:
                continue
            if not self._first:
                self._first = now
            self.moved += nbytes
            return window

    def measured(self) -> float:
        """Bytes per second this process moved under the budget since its first grant."""
        elapsed = self._clock() - self._first if self._first else 0.0
        return self.moved / elapsed if elapsed > 0 else 0.0

    def blocking(self, loop: asyncio.AbstractEventLoop) -> Callable[[int], None]:
        """``take`` for a thread that moves bytes (the copy engine's), run on ``loop``."""

        def take(nbytes: int) -> None:
            asyncio.run_coroutine_threadsafe(self.take(nbytes), loop).result()

        return take
