"""The controller's alarm clock: wake a VM at a time.

Two things wait in a VM's life: a failed step's retry backoff, and the warm
pause between precopy rounds (until the next round or the cutover, whichever
comes first). Both are stored in the VM's state, so after a restart they are
set again from it; here they are only a heap of (time, key) and one loop that
hands each due key back. A wake-up that finds nothing to do changes nothing
(``engine.tick``), so a key woken twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable

IDLE_SECONDS = 3600.0  # with nothing to wake, look again this often (a new alarm wakes it sooner)


class Timers:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._heap: list[tuple[float, str]] = []
        self._kick = asyncio.Event()

    def wake(self, key: str, at: float) -> None:
        """Hand ``key`` back at ``at`` (epoch seconds)."""
        heapq.heappush(self._heap, (at, key))
        self._kick.set()

    async def run(self, fire: Callable[[str], None]) -> None:
        """Call ``fire(key)`` for each alarm as it comes due, until cancelled."""
        while True:
            delay = self._heap[0][0] - self._clock() if self._heap else IDLE_SECONDS
            if delay > 0:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), timeout=delay)
                continue
            _, key = heapq.heappop(self._heap)
            fire(key)
