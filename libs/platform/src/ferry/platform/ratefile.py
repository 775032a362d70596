"""nbdkit's rate file, fed by a reservation: grants taken ahead, their rate written down.

A conversion's captive ``nbdkit`` helpers read through the ``rate`` filter, which
re-reads its ``rate-file`` each second. nbdkit says nothing of what it served, so
whoever paces them (the conversion-service for a local conversion, the pod's own
pacer in a cluster) takes grants from the budgets for as long as the conversion
runs, whether virt-v2v reads at that moment or not, and writes what it was granted
over each period into the file: a *reservation*, never above the budget.

Each grant costs a request and a compare-and-set of the budget's key
(:class:`ferry.bus.rate.SharedRate`), so the size asked follows how long grants take
(:class:`Reservation`, with :class:`~ferry.platform.grantsteps.Steps`): asked in fixed
1 MiB steps, a 256 MiB/s budget cost 256 requests a second for the whole conversion,
and its CPU was the conversion's own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ferry.platform.grantsteps import Steps


def write_rate(path: Path, bits_per_second: int) -> None:
    """nbdkit's ``rate-file``, atomically as it asks: a new file renamed over the old one."""
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(f"{max(1, bits_per_second)}\n")
    os.replace(fresh, path)


class Reservation:
    """What a reservation pacer asks for next, and the rate to write after each period.

    The step follows how long grants take (:class:`~ferry.platform.grantsteps.Steps`):
    a budget with room is reserved in a few grants a period whatever its rate, and a
    budget shared with other movers (whose grants keep this one waiting) in smaller
    steps, which keeps the shares fine-grained.

    A period in which a grant was out of reach writes nothing (:meth:`unreachable`):
    the helpers keep the last rate, and the next period starts when grants are
    answered again.
    """

    def __init__(
        self, floor: int, period: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._steps = Steps(floor, period)
        self.period = period
        self._clock = clock
        self._started = clock()
        self._granted = 0

    @property
    def step(self) -> int:
        """The bytes to ask for next."""
        return self._steps.step

    def granted(self, nbytes: int, waited: float) -> int | None:
        """Record a grant of ``nbytes`` that took ``waited`` seconds; the rate to write
        (bits per second) when a period has ended with it, else None."""
        self._granted += nbytes
        self._steps.took(nbytes, waited)
        elapsed = self._clock() - self._started
        if elapsed < self.period:
            return None
        bits = int(self._granted * 8 / elapsed)
        self._restart()
        return bits

    def unreachable(self) -> None:
        """A grant was out of reach: this period's rate is not written."""
        self._restart()

    def _restart(self) -> None:
        self._started = self._clock()
        self._granted = 0
