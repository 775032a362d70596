"""What a handler may know and do besides computing its result.

Kept apart from the dispatcher so that a handler module's imports name the
one thing handlers touch; everything else about delivery stays the router's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from ferry.proto.base import Message
from ferry.proto.envelope import Envelope

if TYPE_CHECKING:
    from ferry.bus.connection import Bus
    from ferry.bus.dispatcher import Dispatcher
    from ferry.bus.job import Job

# Handler logs keep the logger name they had before the router was split: log
# configurations filter on it.
log = logging.getLogger("ferry.bus.router")

# ``emit`` also keeps the command alive, at most this often (in-progress acks are requests).
_EMIT_KEEPALIVE_SECONDS = 1.0


class Context:
    """What a handler may know and do besides computing its result."""

    __slots__ = (
        "_dispatcher",
        "_job",
        "_last_keepalive",
        "_log",
        "envelope",
        "message",
        "service",
        "subject",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        job: Job,
        env: Envelope,
        message: Message,
        now: float | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._job = job
        self._last_keepalive = time.monotonic() if now is None else now
        self._log: logging.LoggerAdapter[logging.Logger] | None = None
        self.envelope = env
        self.message = message
        self.service = dispatcher.service
        self.subject = job.msg.subject

    @property
    def log(self) -> logging.LoggerAdapter[logging.Logger]:
        """The router's logger, each record tagged with the message's migration, VM and type."""
        if self._log is None:
            message = self.message
            self._log = logging.LoggerAdapter(
                log, {"migration": message.migration, "vm": message.vm, "type": self.envelope.type}
            )
        return self._log

    @property
    def bus(self) -> Bus:
        """The connection, for handlers that read or write key-value state."""
        if self._dispatcher.bus is None:
            raise RuntimeError(
                "this handler uses the bus; give the test broker one (InMemoryBroker(bus=...))"
            )
        return self._dispatcher.bus

    @property
    def canceled(self) -> asyncio.Event:
        """Set when the (migration, vm) is canceled (the task is then cancelled too)."""
        return self._job.canceled

    @property
    def deliveries(self) -> int:
        """1 on the first delivery, more when redelivered."""
        return self._job.deliveries

    async def emit(self, *messages: Message) -> None:
        """Publish now (progress, intermediate facts); also keeps the command alive."""
        await self._dispatcher.publish(messages, cause=self._job.cause)
        if time.monotonic() - self._last_keepalive >= _EMIT_KEEPALIVE_SECONDS:
            self._last_keepalive = time.monotonic()
            await self._job.keep_alive()
