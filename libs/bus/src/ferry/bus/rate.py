"""A bandwidth budget shared by every process that moves bytes under it.

A Budget's ``bandwidthMiBps`` holds for all importers, populators and copies
together, wherever they run, so no process can keep the bucket to itself. The
bucket is one key in the locks bucket (``rate.<budget>``): the current window
(``period`` seconds of wall-clock time) and the bytes granted in it. A mover
asks for a slice before it moves it; the grant is a compare-and-set on the
key's revision, so grants from every replica add up to at most ``rate x
period`` per window (a slice larger than a whole window is granted in pieces of
at most a window, one window after another: a 4 MiB chunk under a 1 MiB/s budget
moves after four windows, not in one), and within a window they keep pace with
the clock, so its first mover cannot take all of it in a burst. Over any run the
movers together get at most ``rate x elapsed`` plus one window (the one the run
began in may have been granted from its start) plus one piece (the one granted
at the start of the last window). A mover that
finds the budget spent sleeps until it has room.

Movers share it fairly, not first come, first served: each ``take`` names its
holder (one copy), and the key records when each holder last asked, what it was
granted in the window, and when each was last refused. While another holder was
refused in the last ``period`` seconds, a holder's grants in the window keep pace
with an equal split of the rate among the holders that asked in that time (at most
one slice ahead, like the whole); while none was, room nobody asks for goes to
whoever asks (no share is left idle). Without it a copy that asks more often (one
whose process gets more CPU) takes the lion's share: 19.1 against 28.9 MiB/s for
two plans on one budget under CPU starvation. A holder that stops asking drops out
of the split one period later.

The cost is one read and one write per slice: with 4 MiB slices at 1 GiB/s
that is 256 grants a second across all movers, plus, for a mover kept waiting, one
write each half period saying so. Expiry is wall-clock time, so
the movers' clocks are assumed in step (NTP). The measured rate of a budget is
what :meth:`SharedRate.measured` says this process moved under it.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from ferry.bus.errors import Conflict
from ferry.proto.subjects import Bucket, token

if TYPE_CHECKING:
    from ferry.bus.connection import Bus
    from ferry.bus.kv import Entry


class Grant(msgspec.Struct, frozen=True, kw_only=True):
    window: float  # start of the window, unix time
    granted: int  # bytes granted in it, by every process
    previous: int = 0  # bytes granted in the window just before it (0: none, or idle)
    asked: dict[str, float] = {}  # holder → when it last asked (unix time), recent ones only
    shares: dict[str, int] = {}  # holder → bytes granted to it in this window
    waiting: dict[str, float] = {}  # holder → when it was last refused a grant


def account(budget: str, value: str = "") -> str:
    """The bucket of a budget for one scope value (a host, a datastore…; '' when global)."""
    return f"{token(budget)}.{token(value)}" if value else token(budget)


def key(budget: str) -> str:
    return f"rate.{budget}"


async def measured(bus: Bus, budget: str, *, period: float = 1.0, now: float = 0.0) -> float:
    """Bytes per second every mover together moved under ``budget`` lately (0 when idle)."""
    entry = await bus.kv(Bucket.LOCKS, Grant).get(key(budget))
    if entry is None:
        return 0.0
    now = now or time.time()
    grant = entry.value
    if now - grant.window >= 2 * period:
        return 0.0  # nothing granted in the last whole window
    if now - grant.window >= period:
        return grant.granted / period  # its last window is over: that one is the figure
    return grant.previous / period


async def measured_accounts(bus: Bus, budget: str, *, period: float = 1.0) -> dict[str, float]:
    """The measured rate of each account of ``budget`` ('' for a global one), by its token."""
    base = key(token(budget))
    found: dict[str, float] = {}
    for name in await bus.kv(Bucket.LOCKS, Grant).keys(base):
        if name == base or name.startswith(base + "."):
            value = name[len(base) + 1 :]
            found[value] = await measured(bus, name[len("rate.") :], period=period)
    return found


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
        self._holder = uuid.uuid4().hex[:12]

    async def take(self, nbytes: int, holder: str = "") -> float:
        """Wait until ``nbytes`` may move under the budget; the window they (their last
        piece, when larger than a window) were granted in.

        ``holder`` names the copy asking (default: this ``SharedRate``): the
        window is split equally among the holders that asked lately.
        """
        holder = holder or self._holder
        window = math.floor(self._clock() / self._period) * self._period
        while nbytes > 0:
            # A slice larger than a window moves in window-sized pieces: granted whole
            # in an empty window, it would move faster than the budget allows.
            piece = min(nbytes, max(1, int(self.rate * self._period)))
            window = await self._take_piece(piece, holder)
            nbytes -= piece
        return window

    async def _take_piece(self, nbytes: int, holder: str) -> float:
        while True:
            cap = self.rate * self._period  # read each time: a budget may change meanwhile
            now = self._clock()
            window = math.floor(now / self._period) * self._period
            entry = await self._kv.get(self._key)
            current = entry.value if entry is not None else None
            same = current is not None and current.window == window
            granted = current.granted if current is not None and same else 0
            shares = dict(current.shares) if current is not None and same else {}
            seen = current.asked if current is not None else {}
            asked = {h: t for h, t in seen.items() if now - t < self._period}
            asked[holder] = now
            mine, fair = shares.get(holder, 0), self.rate / len(asked)
            # Holders refused in the last period, whether granted since or not: while one
            # contends, the others keep to their shares (a starved copy is refused often).
            refused = {
                h: t
                for h, t in (current.waiting if current is not None else {}).items()
                if h in asked and now - t < self._period
            }
            waiting = {h: t for h, t in refused.items() if h != holder}
            wake = 0.0
            # Within a window grants keep pace with the clock (at most one slice ahead):
            # else the first mover of a window would take all of it in a burst…
            if granted and (granted + nbytes > cap or granted > self.rate * (now - window)):
                wake = min(window + self._period, window + granted / self.rate)
            # …and, while another holder waits, so does each holder's own share of it: an
            # equal split among those asking.
            # (Paced only, not capped at an equal split of the window: a slice larger
            # than the split, 4 MiB chunks among many copies, would else move one per
            # window and leave the rest of the budget unused.)
            over = mine > fair * (now - window)
            if waiting and over:
                wake = max(wake, min(window + self._period, window + mine / fair))
            if wake:
                mark = current.waiting.get(holder, 0.0) if current is not None else 0.0
                if now - mark > self._period / 2:
                    # Say that this holder waits, so the others leave it its share.
                    note = Grant(
                        window=current.window if current is not None else window,
                        granted=current.granted if current is not None else 0,
                        previous=current.previous if current is not None else 0,
                        asked=asked,
                        shares=current.shares if current is not None else {},
                        waiting={**waiting, holder: now},
                    )
                    if not await self._write(entry, note):
                        continue
                await asyncio.sleep(max(0.001, wake - self._clock()))
                continue
            if current is not None and same:
                previous = current.previous
            elif current is not None and abs(current.window + self._period - window) < 1e-6:
                previous = current.granted
            else:
                previous = 0
            shares[holder] = mine + nbytes
            grant = Grant(
                window=window,
                granted=granted + nbytes,
                previous=previous,
                asked=asked,
                shares=shares,
                waiting=refused,
            )
            if not await self._write(entry, grant):
                continue
            if not self._first:
                self._first = now
            self.moved += nbytes
            return window

    async def _write(self, entry: Entry[Grant] | None, grant: Grant) -> bool:
        """Compare-and-set the key; False when another mover wrote it first."""
        try:
            if entry is None:
                await self._kv.create(self._key, grant)
            else:
                await self._kv.update(self._key, grant, entry.revision)
        except Conflict:
            return False
        return True

    def measured(self) -> float:
        """Bytes per second this process moved under the budget since its first grant."""
        elapsed = self._clock() - self._first if self._first else 0.0
        return self.moved / elapsed if elapsed > 0 else 0.0

    def blocking(self, loop: asyncio.AbstractEventLoop) -> Callable[[int], None]:
        """``take`` for a thread that moves bytes (the copy engine's), run on ``loop``."""

        holder = uuid.uuid4().hex[:12]  # one copy: one holder

        def take(nbytes: int) -> None:
            asyncio.run_coroutine_threadsafe(self.take(nbytes, holder), loop).result()

        return take
