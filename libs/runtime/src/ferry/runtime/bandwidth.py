"""Bandwidth budgets where the bytes move: one shared token bucket per budget account.

A CopyDisks or a ConvertGuest names the bandwidth budgets its VM touches (the
controller's scheduler knows them). Every chunk a workload copies waits for each of
them (:class:`ferry.bus.rate.SharedRate` over the locks bucket), so the importers,
populators and conversions of every replica together keep to a budget's MiB/s,
whichever plans their VMs belong to.

A Budget changed while copies run applies to them: its rate is re-read from the
objects bucket at most every ``REFRESH`` seconds while a copy moves under it (a
budget deleted meanwhile keeps the rate the command carried; the controller
starts no new copy under it). What this replica moved per budget is the counter
``ferry_budget_bytes_moved_total``; every replica's together is what
``ferry describe budget`` reads from the bucket's key.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

from ferry.bus import Bus
from ferry.bus.rate import SharedRate
from ferry.proto import objects, subjects
from ferry.proto.budget import Budget
from ferry.proto.subjects import Bucket
from ferry.proto.volume import Bandwidth

log = logging.getLogger(__name__)

MIB = 1 << 20
REFRESH = 5.0  # seconds between re-reads of a Budget a copy moves under


class Rates:
    """This replica's shared rates, one per budget account, and what it moved under each."""

    def __init__(
        self,
        bus: Bus,
        *,
        period: float = 1.0,
        refresh: float = REFRESH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self._period = period
        self._refresh = refresh
        self._clock = clock
        self._rates: dict[str, SharedRate] = {}
        self._accounts: dict[str, set[str]] = {}  # budget → its accounts seen here
        self._read: dict[str, float] = {}  # budget → when its object was last read
        self.moved = Counter(
            "ferry_budget_bytes_moved",
            "Bytes this replica's copies moved under each bandwidth budget account.",
            ["budget", "account"],
            registry=None,
        )

    def pace(self, bandwidth: list[Bandwidth]) -> Callable[[int], Awaitable[None]] | None:
        """What a copy under these budgets awaits before each chunk; ``None`` if unbounded."""
        if not bandwidth:
            return None
        holder = uuid.uuid4().hex[:12]  # this copy: budgets are split equally among copies

        async def take(nbytes: int) -> None:
            for bw in bandwidth:
                rate = await self._rate(bw)
                await rate.take(nbytes, holder)
                self.moved.labels(bw.budget, bw.account).inc(nbytes)

        return take

    def rate_of(self, account: str) -> float:
        """The bytes per second this replica paces ``account`` at now (0 if unseen)."""
        rate = self._rates.get(account)
        return rate.rate if rate is not None else 0.0

    async def _rate(self, bw: Bandwidth) -> SharedRate:
        rate = self._rates.get(bw.account)
        if rate is None:
            rate = SharedRate(self._bus, bw.account, bw.bytes_per_second, period=self._period)
            self._rates[bw.account] = rate
            self._accounts.setdefault(bw.budget, set()).add(bw.account)
        now = self._clock()
        if now - self._read.get(bw.budget, 0.0) >= self._refresh:
            self._read[bw.budget] = now
            current = await self._current(bw.budget)
            if current is not None and current != rate.rate:
                log.info(
                    "budget %s now allows %.1f MiB/s (was %.1f)",
                    bw.budget,
                    current / MIB,
                    rate.rate / MIB,
                )
            if current is not None:
                for account in self._accounts[bw.budget]:
                    self._rates[account].rate = current
        return rate

    async def _current(self, budget: str) -> float | None:
        try:
            entry = await self._bus.kv(Bucket.OBJECTS, dict).get(
                subjects.object_key(Budget.KIND, budget)
            )
        except Exception as exc:  # the copy goes on at the rate it has
            log.warning("could not re-read budget %s: %s", budget, exc)
            return None
        if entry is None:
            return None
        found = objects.from_document(entry.value)
        if not isinstance(found, Budget) or found.spec.bandwidthMiBps is None:
            return None
        return found.spec.bandwidthMiBps * MIB
