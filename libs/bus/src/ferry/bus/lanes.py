"""Lanes: first-in first-out queues by key, each run by one worker at a time.

The dispatcher keeps one lane per (migration, vm): the jobs of one VM run one after
another, different VMs' in parallel. A lane is run by a long-lived worker task, not
a task of its own: creating, scheduling and collecting a task was most of the
dispatcher's cost per message, and nearly every lane holds one message.

Workers are reused: one whose lane is empty takes the next ready lane, or parks
until :meth:`Lanes.put` readies one. A worker that starts a lane while others
still wait first calls another worker (a parked one, or a new one), so if this
lane's handler waits on I/O the next lane starts without it; when the handlers do
not wait, one worker runs a whole batch of lanes without a turn of the event loop
in between. So there are never more workers than lanes running at once, plus one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lanes(Generic[T]):
    """Items queued per key; ``run(item, worker)`` is awaited for each, in order within a
    key, by ``worker`` (the task to cancel to interrupt it: passed along because asking
    asyncio for the current task, once an item, cost more than the rest of a call)."""

    def __init__(
        self, run: Callable[[T, asyncio.Task[None]], Awaitable[None]], name: str = "ferry-lanes"
    ) -> None:
        self._run = run
        self.name = name
        self.queues: dict[str, deque[T]] = {}  # lanes with items; the head is the one running
        self.workers: set[asyncio.Task[None]] = set()
        self._ready: deque[str] = deque()  # lanes no worker has taken yet
        self._parked: list[tuple[asyncio.Task[None], asyncio.Future[None]]] = []
        self._called: asyncio.Task[None] | None = None  # on its way to the ready lanes
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.closed = False

    def put(self, key: str, item: T) -> None:
        """Queue ``item`` on lane ``key``; a lane that was idle gets a worker."""
        queue = self.queues.get(key)
        if queue is None:
            queue = self.queues[key] = deque()
            self._ready.append(key)
            if self._called is None:
                self._call()
        queue.append(item)

    async def drained(self) -> None:
        """Return once every lane is empty (at once if they are)."""
        if not self.queues:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._drain_waiters.remove(waiter)

    async def close(self) -> None:
        """No more parking: idle workers end now, busy ones once their lane is empty."""
        self.closed = True
        parked = [worker for worker, _ in self._parked]
        for worker in parked:
            worker.cancel()
        await asyncio.gather(*parked, return_exceptions=True)

    # -- workers -------------------------------------------------------------------

    def _call(self) -> None:
        """Make sure a worker comes for the ready lanes: the one already called, a parked
        one, or a new one."""
        if self._called is not None:
            return
        while self._parked:
            worker, wake = self._parked.pop()
            if not wake.done():  # (done: cancelled while parked, on its way out)
                wake.set_result(None)
                self._called = worker
                return
        worker = asyncio.create_task(self._work(), name=self.name)
        self.workers.add(worker)
        worker.add_done_callback(self._ended)
        self._called = worker

    def _ended(self, worker: asyncio.Task[None]) -> None:
        self.workers.discard(worker)
        if self._called is worker:
            self._called = None  # cancelled before it ran: only when torn down

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        loop = asyncio.get_running_loop()
        run = self._run
        while True:
            if self._called is me:
                self._called = None
            while self._ready:
                key = self._ready.popleft()
                if self._ready and self._called is None:
                    self._call()  # in case this lane's handler waits
                queue = self.queues.get(key)
                if queue is None:
                    continue
                # The lane, run here rather than in a coroutine of its own (nearly every
                # lane holds one item: one coroutine fewer per item).
                try:
                    while queue:
                        try:
                            await run(queue[0], me)
                        finally:
                            queue.popleft()
                finally:
                    if self.queues.get(key) is queue:
                        del self.queues[key]
                    if not self.queues and self._drain_waiters:
                        self._wake_drain_waiters()
            if self.closed:
                return
            wake: asyncio.Future[None] = loop.create_future()
            entry = (me, wake)
            self._parked.append(entry)
            try:
                await wake
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._parked.remove(entry)
                raise

    def _wake_drain_waiters(self) -> None:
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
