"""The hooks a middleware may implement, each with a do-nothing default."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ferry.bus.outcome import Attempt, GiveUp, Verdict

if TYPE_CHECKING:
    from ferry.bus.dispatcher import Dispatcher
    from ferry.bus.job import Job

Call = Callable[[], Awaitable[Any]]


class Middleware(Protocol):
    """Hooks around dispatch; subclass it and override what you need."""

    async def start(self, dispatcher: Dispatcher) -> None:
        return None

    async def stop(self) -> None:
        return None

    def in_flight(self, n: int) -> None:
        return None

    def waiting(self, consumer: str, n: int) -> None:
        """Messages on ``consumer`` not yet delivered to any replica (read periodically)."""
        return None

    def check(self, job: Job) -> Verdict | None:
        """``before`` for middleware that decides without waiting: no coroutine per message."""
        return None

    async def before(self, job: Job) -> Verdict | None:
        return None

    def wrap(self, job: Job, call: Call) -> Call:
        return call

    def judge(self, job: Job, attempt: Attempt) -> Verdict | None:
        return None

    async def reported(self, job: Job, verdict: GiveUp) -> None:
        return None

    def after(self, job: Job, verdict: Verdict) -> None:
        return None
