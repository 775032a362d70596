"""A bandwidth budget on a clock of its own, for tests of whoever asks it for grants.

It keeps pace as :class:`ferry.bus.rate.SharedRate`'s grants do: a grant waits until
everything granted so far fits in the rate since the start (less what ``others`` take
beside it), plus a request's round trip. The clock moves only by those waits and by
what the test adds, so a minute of asking runs in milliseconds and always the same.
"""

from __future__ import annotations

ROUND_TRIP = 0.002  # seconds a grant takes when the budget has room


class ClockedBudget:
    def __init__(self, rate: float, others: float = 0.0) -> None:
        self.rate, self.others = rate, others
        self.now = 0.0
        self.granted = 0
        self.asks = 0

    def clock(self) -> float:
        return self.now

    def take(self, nbytes: int) -> float:
        """Grant ``nbytes``; how long it waited."""
        self.asks += 1
        ready = self.granted / (self.rate - self.others)
        waited = max(0.0, ready - self.now) + ROUND_TRIP
        self.now += waited
        self.granted += nbytes
        return waited
