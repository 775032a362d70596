"""One rule for thinning progress reports, shared by every service that relays them.

Progress arrives far more often than anyone needs to see it: the copy engine
reports each chunk, virt-v2v redraws its bar many times a second, and the
controller hears every report the services let through. Each of them thins the
stream with the same :class:`Throttle`, so "first, last, and at most one per
interval" means the same thing everywhere and is tested once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass(slots=True)
class _Seen:
    at: float
    done: float
    stage: Hashable


class Throttle:
    """Per key (a disk, a VM): admit a report when it is

    * the first of its key;
    * of a new stage (a new virt-v2v phase, the next disk);
    * the one that reaches the total (once: a repeat of 100 % is not news);
    * moved since the last admitted one, at least ``interval`` seconds after it.

    A report that did not move is never repeated, however late: it would say
    nothing new. Not thread-safe: call it from one event loop.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last: dict[Hashable, _Seen] = {}

    def admit(self, key: Hashable, done: float, total: float, stage: Hashable = None) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None:
            finished = done >= total > last.done
            moved = done != last.done and now - last.at >= self.interval
            if stage == last.stage and not finished and not moved:
                return False
        self._last[key] = _Seen(now, done, stage)
        return True

    def forget(self, key: Hashable) -> None:
        """Drop what is known of ``key`` (its work ended), so memory stays bounded."""
        self._last.pop(key, None)
