"""Progress of disk transfers, from the platform's callbacks to throttled bus events.

The platform reports progress through a plain callback, possibly from a worker
thread, possibly many times a second. Publishing is a coroutine on the
service's event loop. :class:`ProgressRelay` bridges the two: the callback only
schedules a hand-off onto the loop (``call_soon_threadsafe``), the shared
:class:`ferry.runtime.progress.Throttle` keeps at most one report per disk per
interval (plus the first and the last), and one publisher task sends the newest
admitted report of each disk. If the bus is slower than the copy, older reports
are replaced rather than queued, so memory stays flat and the bus is never flooded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

from ferry.platform.volumes import TransferProgress
from ferry.proto.volume import DiskProgress
from ferry.runtime.progress import Throttle

log = logging.getLogger("ferry.volume_service.progress")

Emit = Callable[[DiskProgress], Awaitable[None]]
Make = Callable[[TransferProgress], DiskProgress]


class ProgressRelay:
    """Use as ``async with ProgressRelay(...) as relay`` and pass ``relay.callback``.

    Leaving the block normally publishes what is still pending; leaving it with
    an exception (a failure, a cancellation) drops it.
    """

    def __init__(self, emit: Emit, make: Make, throttle: Throttle) -> None:
        self._emit = emit
        self._make = make
        self._throttle = throttle
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, TransferProgress] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    async def __aenter__(self) -> ProgressRelay:
        self._task = asyncio.create_task(self._publish(), name="ferry-volume-progress")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is None:
            return
        if exc_type is None:
            await self._barrier()
            self._closing = True
            self._wake.set()
            await self._task
        else:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def callback(self, progress: TransferProgress) -> None:
        """The platform's progress callback: safe from any thread, never blocks."""
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody listens
            self._loop.call_soon_threadsafe(self._offer, progress)

    def _offer(self, progress: TransferProgress) -> None:
        if self._throttle.admit(progress.disk_id, progress.done, progress.total):
            self._pending[progress.disk_id] = progress
            self._wake.set()

    async def _barrier(self) -> None:
        """Wait until every hand-off scheduled before now has run on the loop."""
        done = self._loop.create_future()
        self._loop.call_soon_threadsafe(done.set_result, None)
        await done

    async def _publish(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            for progress in batch.values():
                try:
                    await self._emit(self._make(progress))
                    self.published += 1
                except Exception as exc:  # progress is best effort; the result is what counts
                    log.warning("progress of disk %s not published: %s", progress.disk_id, exc)
            if self._closing and not self._pending:
                return
