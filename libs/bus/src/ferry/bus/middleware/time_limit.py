"""Time limits: a handler that runs longer than its limit is stopped and retried.

Not in the default chain (no service asks for it yet); a router opts in with
``Router(..., middleware=[TimeLimit(seconds)])``. The overrun is an ordinary
handler error, so :mod:`retries` decides what follows, as for any other error.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ferry.bus.middleware.base import Call, Middleware

if TYPE_CHECKING:
    from ferry.bus.job import Job


class TimeLimitExceeded(Exception):
    """The handler ran longer than its time limit."""


class TimeLimit(Middleware):
    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("a time limit must be positive")
        self.seconds = seconds

    def wrap(self, job: Job, call: Call) -> Call:
        async def limited() -> Any:
            try:
                async with asyncio.timeout(self.seconds):
                    return await call()
            except TimeoutError:
                raise TimeLimitExceeded(
                    f"{job.type_name} ran longer than {self.seconds:g}s"
                ) from None

        return limited
