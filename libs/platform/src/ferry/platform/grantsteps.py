"""How much to ask a bandwidth budget for at once: steps that follow how long grants take.

Every grant of a budget costs a request and a compare-and-set of the budget's key
(:class:`ferry.bus.rate.SharedRate`), and from a pod an HTTP request to the service
that started it. Asked one chunk (4 MiB) at a time, a copy under a 1 GiB/s budget with
room would cost 256 of each a second, the service's CPU and the bus's, for as long as
it runs. So whoever asks does it in :class:`Steps`: doubled while a grant comes at once
(in less than 1/(2·ASKS) of a period), halved while one waits longer than 1/ASKS of
it, between a floor and a ceiling. A budget with room is then asked ASKS to 2·ASKS
times a period whatever its rate; a budget that is spent (grants wait for the clock,
or for other movers' shares) in steps back at the floor, so the shares stay
fine-grained and nothing is held far ahead.

Two kinds of askers use them: a conversion's *reservation*
(:class:`ferry.platform.ratefile.Reservation`, which writes what it was granted into
nbdkit's rate file) and a copy's :class:`Allowance` (grants taken ahead of the chunks
that spend them: no byte moves before its grant, and at most one step of a budget is
left unspent when the copy ends).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MiB = 1 << 20
CEILING = 256 * MiB  # the most a reservation asks at once
ALLOWANCE_CEILING = 64 * MiB  # the most a copy asks at once (left unspent at most)
ASKS = 8  # grants wanted per period, at least (at most twice as many)
PERIOD = 1.0  # seconds: a budget's window


class Steps:
    """The size of the next ask, from how long the last ones took."""

    def __init__(self, floor: int, period: float = PERIOD, ceiling: int = CEILING) -> None:
        if floor <= 0 or period <= 0:
            raise ValueError("asking in steps needs a positive step and period")
        self.floor = floor
        self.ceiling = max(floor, ceiling)
        self.period = period
        self.step = floor

    def took(self, nbytes: int, waited: float) -> None:
        """A grant of ``nbytes`` took ``waited`` seconds."""
        if waited < self.period / (2 * ASKS):
            self.step = min(self.ceiling, max(self.step, nbytes) * 2)
        elif waited > self.period / ASKS:
            self.step = max(self.floor, self.step // 2)


class Allowance:
    """A copy's throttle that asks ``ask`` in :class:`Steps` and spends the grants on
    the chunks that come: ``allowance(n)`` returns once ``n`` more bytes are covered
    by grants. While the step is at its floor it asks for exactly what a chunk needs,
    as a plain per-chunk throttle does; ahead only once grants came at once.
    Thread-safe (a copy's workers ask from several threads)."""

    def __init__(
        self,
        ask: Callable[[int], None],
        floor: int,
        *,
        period: float = PERIOD,
        ceiling: int = ALLOWANCE_CEILING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ask = ask
        self._steps = Steps(floor, period, ceiling)
        self._clock = clock
        self._left = 0
        self._lock = threading.Lock()
        self.asked = 0  # bytes granted so far (what the copy spent, plus what is left)

    def __call__(self, nbytes: int) -> None:
        with self._lock:
            while self._left < nbytes:
                need = nbytes - self._left
                # at the floor (grants wait, or none was asked yet) exactly what is
                # needed: a small extent under a small budget waits for itself alone
                ahead = self._steps.step > self._steps.floor
                want = max(self._steps.step, need) if ahead else need
                started = self._clock()
                self._ask(want)
                self._steps.took(want, self._clock() - started)
                self._left += want
                self.asked += want
            self._left -= nbytes

    @property
    def ask(self) -> Callable[[int], None]:
        """What grants come from (a pod's broker, the local service's answers)."""
        return self._ask

    @property
    def step(self) -> int:
        """The bytes the next ask asks for, at least."""
        return self._steps.step

    @property
    def unspent(self) -> int:
        """Bytes granted and not spent yet (at most one step)."""
        return self._left
