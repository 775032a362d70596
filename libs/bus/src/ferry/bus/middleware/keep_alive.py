"""Keep-alive: in-progress acks for every held message, every ack_wait/3.

JetStream redelivers a message whose ack_wait runs out; work longer than that
would run twice. So while a replica holds a message (queued on its lane or
running) it tells the server it is still at it, and the server only redelivers
when the process is really gone, or starved of CPU past ack_wait (which the
dispatcher's settled memory catches).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ferry.bus.middleware.base import Middleware
from ferry.bus.tasks import cancel_and_wait

if TYPE_CHECKING:
    from ferry.bus.dispatcher import Dispatcher


class KeepAlive(Middleware):
    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None

    async def start(self, dispatcher: Dispatcher) -> None:
        if dispatcher.ack_wait is None:
            return  # no server counting down (the in-memory broker)
        period = max(0.1, dispatcher.ack_wait / 3.0)
        self._task = asyncio.create_task(self._loop(dispatcher, period), name="ferry-keepalive")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    @staticmethod
    async def _loop(dispatcher: Dispatcher, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            for job in list(dispatcher.held):
                await job.keep_alive()
