"""Cancellation: a canceled VM's queued messages end without running; its running handler stops.

Requests are keys in the CANCEL bucket (see :mod:`ferry.bus.cancellation`),
watched here from the start of a run, so that a request made before this
replica started is seen too. A handler can be exempt (``cancelable=False``):
the cancel command's own, and every event handler by default, since events are
facts a reacting service must see. A canceled message is given up with the
outcome ``canceled``, without a dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from ferry.bus import cancellation
from ferry.bus.errors import Canceled
from ferry.bus.middleware.base import Middleware
from ferry.bus.outcome import Attempt, GiveUp, Verdict
from ferry.bus.tasks import cancel_and_wait
from ferry.proto.base import FailureOutcome
from ferry.proto.subjects import Bucket

if TYPE_CHECKING:
    from ferry.bus.dispatcher import Dispatcher
    from ferry.bus.job import Job

READY_TIMEOUT_SECONDS = 10.0  # how long a run waits for the current requests before fetching


class Cancellation(Middleware):
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self._dispatcher: Dispatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        if dispatcher.bus is None:
            return  # the in-memory broker: requests come from ``request``
        ready = asyncio.Event()
        self._task = asyncio.create_task(self._watch(dispatcher, ready), name="ferry-cancel-watch")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), timeout=READY_TIMEOUT_SECONDS)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)

    def check(self, job: Job) -> Verdict | None:
        if not self.keys:
            return None  # nothing canceled (nearly always): no more to look at
        if job.route is not None and job.route.cancelable and self._is_canceled(job):
            return GiveUp(FailureOutcome.CANCELED, "canceled", [], "canceled")
        return None

    def judge(self, job: Job, attempt: Attempt) -> Verdict | None:
        error = attempt.error
        if job.cancel_reason == "canceled" or isinstance(error, Canceled):
            reason = error.reason if isinstance(error, Canceled) else "canceled while running"
            return GiveUp(FailureOutcome.CANCELED, reason, [], "canceled")
        return None

    def request(self, key: str) -> None:
        """A cancel request for ``key`` (``<migration>.<vm>`` or ``<migration>._all``) arrived."""
        self.keys.add(key)
        if self._dispatcher is None:
            return
        for job in list(self._dispatcher.held):
            if key not in cancellation.lane_keys(job.migration_token, job.vm_token):
                continue
            route = self._dispatcher.route_of(job)
            if route is not None and not route.cancelable:
                continue
            job.canceled.set()
            job.interrupt("canceled", "ferry: canceled")

    def withdraw(self, key: str) -> None:
        self.keys.discard(key)

    def _is_canceled(self, job: Job) -> bool:
        if not self.keys:
            return False
        return any(
            k in self.keys for k in cancellation.lane_keys(job.migration_token, job.vm_token)
        )

    async def _watch(self, dispatcher: Dispatcher, ready: asyncio.Event) -> None:
        assert dispatcher.bus is not None
        kv = await dispatcher.bus.js.key_value(Bucket.CANCEL.value)
        watcher = await kv.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                if entry is None:
                    ready.set()
                    continue
                if entry.operation in ("DEL", "PURGE"):
                    self.withdraw(entry.key)
                else:
                    self.request(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
