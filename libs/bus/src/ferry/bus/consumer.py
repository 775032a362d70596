"""The NATS side of a run: bind durable pull consumers, fetch into the dispatcher, shut down.

* **bounds** — a replica fetches only as many messages as it has free slots,
  so the shared durable consumer spreads work over replicas;
* **not twice** — a redelivery reaching the replica that still holds, or just
  settled, the same stream sequence is recognised and not run again;
* **shutdown** — stop fetching and drop the pull subscriptions (so no request
  left at the server catches work handed back), give running handlers
  ``grace_seconds``, then nak what is left (no delay) so another replica picks it
  up at once. Acks and
  in-progress acks keep flowing until the last handler is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from ferry.bus import topology
from ferry.bus.dispatcher import Dispatcher
from ferry.bus.job import Job, quietly
from ferry.bus.middleware import Middleware
from ferry.proto import subjects
from ferry.proto.subjects import Service

if TYPE_CHECKING:
    from ferry.bus.connection import Bus
    from ferry.bus.router import Router

# Redelivery warnings keep the logger name they had before the router was split.
log = logging.getLogger("ferry.bus.router")


# The longest a busy replica waits for more of its handlers to end before it fetches.
GATHER_SECONDS = 0.005


def events_consumer_name(service: Service) -> str:
    return f"{service.value}-events"


@dataclass(eq=False)
class Source:
    """A durable pull consumer the router takes work from."""

    stream: str
    consumer: str
    sub: JetStreamContext.PullSubscription
    ack_wait: float
    max_deliver: int


class Consumer:
    """One ``Router.run``: its sources, fetch loops and shutdown around a dispatcher."""

    def __init__(
        self,
        router: Router,
        bus: Bus,
        middleware: Sequence[Middleware],
        concurrency: int,
        fetch_wait: float,
        depth_seconds: float = 15.0,
    ) -> None:
        self.router = router
        self.bus = bus
        self.service = router.service
        self.middleware = list(middleware)
        self.concurrency = concurrency
        self.fetch_wait = fetch_wait
        self.depth_seconds = depth_seconds
        self.sources: list[Source] = []
        self.reserved = 0
        self.halt = asyncio.Event()  # set when shutdown starts, whatever triggered it
        self.dispatcher: Dispatcher | None = None

    async def serve(self, stop: asyncio.Event, grace_seconds: float) -> None:
        await self._bind()
        ack_wait = min(src.ack_wait for src in self.sources)
        dispatcher = Dispatcher(
            self.router, self.bus, self.middleware, bus=self.bus, ack_wait=ack_wait
        )
        self.dispatcher = dispatcher
        started: list[Middleware] = []
        fetchers: list[asyncio.Task[None]] = []
        try:
            for mw in self.middleware:
                started.append(mw)
                await mw.start(dispatcher)
            fetchers = [
                asyncio.create_task(
                    self._fetch_loop(dispatcher, src), name=f"ferry-fetch-{src.consumer}"
                )
                for src in self.sources
            ]
            fetchers.append(asyncio.create_task(self._depth_loop(), name="ferry-queue-depth"))
            log.info(
                "%s router running: %s (concurrency %d)",
                self.service.value,
                ", ".join(self.router.types),
                self.concurrency,
            )
            await stop.wait()
            await self._shutdown(dispatcher, fetchers, grace_seconds)
        except asyncio.CancelledError:
            await self._shutdown(dispatcher, fetchers, 0.0)
            raise
        finally:
            for mw in reversed(started):
                with contextlib.suppress(Exception):
                    await mw.stop()
            await self._unsubscribe()

    # -- setup -------------------------------------------------------------------

    async def _bind(self) -> None:
        await topology.declare(self.bus, self.bus.settings, [self.service])
        intake = self.router.intake
        if intake.kind == "commands":
            stream = subjects.command_stream(self.service)
            consumer = subjects.command_consumer(self.service)
        else:
            stream = subjects.EVENTS_STREAM
            consumer = intake.durable or events_consumer_name(self.service)
            base = topology.command_consumer(self.bus.settings, self.service)
            config = api.ConsumerConfig(
                name=consumer,
                durable_name=consumer,
                description=f"events the {self.service.value} service reacts to",
                deliver_policy=api.DeliverPolicy.ALL,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=base.ack_wait,
                # No server-side cap: a delivery held by a replica that died (kill -9
                # during a restart storm) still counts, and a capped event would never
                # come back, leaving its VM waiting forever. Handler failures are still
                # given up on after ``max_deliver`` deliveries, by the retries middleware.
                max_deliver=-1,
                max_ack_pending=base.max_ack_pending,
                filter_subjects=list(intake.filter_subjects) or [subjects.all_events()],
            )
            await self.bus.js.add_consumer(stream, config=config)
        self.sources.append(await self._source(stream, consumer))

    async def _source(self, stream: str, consumer: str) -> Source:
        info = await self.bus.js.consumer_info(stream, consumer)
        sub = await self.bus.js.pull_subscribe_bind(consumer, stream=stream)
        ack_wait = float(info.config.ack_wait or self.bus.settings.ack_wait_seconds)
        max_deliver = int(info.config.max_deliver or self.bus.settings.max_deliver)
        if max_deliver < 1:
            max_deliver = self.bus.settings.max_deliver
        return Source(stream, consumer, sub, ack_wait, max_deliver)

    # -- fetching ----------------------------------------------------------------

    async def _depth_loop(self) -> None:
        """Report each consumer's undelivered messages: a queue that grows while no
        handler runs is a stuck service, which in-flight counts alone cannot show."""
        while not self.halt.is_set():
            for src in self.sources:
                try:
                    info = await self.bus.js.consumer_info(src.stream, src.consumer)
                except Exception as bad:  # a metric must never stop the service
                    log.debug("queue depth of %s not read: %s", src.consumer, bad)
                    continue
                for mw in self.middleware:
                    mw.waiting(src.consumer, int(info.num_pending or 0))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.halt.wait(), self.depth_seconds)

    def _free(self, dispatcher: Dispatcher) -> int:
        return self.concurrency - len(dispatcher.held) - self.reserved

    async def _fetch_loop(self, dispatcher: Dispatcher, src: Source) -> None:
        while not self.halt.is_set():
            free = self._free(dispatcher)
            if free <= 0:
                dispatcher.slot_freed.clear()
                await _wait_any(self.halt, dispatcher.slot_freed)
                continue
            if free < self._batch() and dispatcher.held:
                free = await self._gather_room(dispatcher)
                if free <= 0 or self.halt.is_set():
                    continue
            self.reserved += free
            try:
                msgs = await self._fetch(src, free)
            finally:
                self.reserved -= free
            for msg in msgs:
                if self.halt.is_set():
                    await quietly(msg.nak())
                    continue
                job = _job(src, msg)
                held, verb = dispatcher.redelivered_here(job.sequence)
                if held or verb is not None:
                    await self._settle_copy(msg, held, verb)
                else:
                    dispatcher.accept(job, report=False)
            if msgs:
                dispatcher.report_in_flight()

    def _batch(self) -> int:
        """Free slots worth a fetch of their own while handlers still run: half of them."""
        return max(1, self.concurrency // 2)

    async def _gather_room(self, dispatcher: Dispatcher) -> int:
        """Let a few more handlers end before fetching, for at most ``GATHER_SECONDS``.

        Every fetch is a round trip to the server. A busy replica that fetched as
        soon as one slot was free would fetch one message per finished handler; so
        while others still run, it waits briefly for half its slots (an idle
        replica, or one whose handlers are long, fetches at once or after the wait).
        """
        deadline = asyncio.get_running_loop().time() + GATHER_SECONDS
        while not self.halt.is_set():
            free = self._free(dispatcher)
            left = deadline - asyncio.get_running_loop().time()
            if free >= self._batch() or not dispatcher.held or left <= 0:
                return free
            dispatcher.slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dispatcher.slot_freed.wait(), left)
        return 0

    @staticmethod
    async def _settle_copy(msg: Msg, held: bool, verb: str | None) -> None:
        """A second delivery of a message this replica holds or already settled: don't run it.

        Still held (queued or running): the held copy's ack or nak settles the stream
        sequence, so this copy is dropped. Already acked or terminated here (the
        settlement came after ack_wait, or was lost): settle this copy the same way.
        A message this replica nak'ed is a wanted retry and runs again (it is not
        passed here).
        """
        if held:
            log.warning("%s redelivered while still held here; not run twice", msg.subject)
            return
        log.warning("%s redelivered after it was settled here; settled again", msg.subject)
        await quietly(msg.ack() if verb == "ack" else msg.term())

    async def _fetch(self, src: Source, batch: int) -> list[Msg]:
        try:
            return await src.sub.fetch(batch, timeout=self.fetch_wait)
        except (NatsTimeoutError, TimeoutError):
            return []
        except ConnectionClosedError:
            await asyncio.sleep(self.fetch_wait)
            return []
        except APIError as err:
            log.warning("fetch from %s/%s failed: %s", src.stream, src.consumer, err)
            await asyncio.sleep(self.fetch_wait)
            return []

    # -- shutdown ----------------------------------------------------------------

    async def _shutdown(
        self, dispatcher: Dispatcher, fetchers: list[asyncio.Task[None]], grace_seconds: float
    ) -> None:
        dispatcher.stopping = True
        self.halt.set()
        log.info("%s router stopping: %d in flight", self.service.value, len(dispatcher.held))
        await asyncio.gather(*fetchers, return_exceptions=True)
        # No pull request of this run may outlive its fetches: the server hands a nak'ed
        # message to the oldest request still waiting, and a request the client gave up on
        # a moment before the server expired it (flushed late on a loaded machine) would
        # swallow the work handed back below until ack_wait. Without interest in its
        # inbox the server skips it. (A message it delivered in the moment before is
        # dropped with the subscription and comes back after ack_wait, as a lost ack's.)
        await self._unsubscribe()
        for lane in list(dispatcher.lanes.values()):
            for job in list(lane):
                if job.state == "queued":
                    await dispatcher.nak(job, 0.0)
        if grace_seconds > 0:
            await _within(grace_seconds, dispatcher.drained())
        for job in list(dispatcher.held):
            job.interrupt("shutdown", "ferry: shutting down")
        await _within(10.0, dispatcher.drained())
        await dispatcher.close()

    async def _unsubscribe(self) -> None:
        """Drop this run's pull subscriptions (once; later calls do nothing) and flush."""
        for src in self.sources:
            with contextlib.suppress(Exception):
                await src.sub.unsubscribe()
        with contextlib.suppress(Exception):
            await self.bus.nc.flush(timeout=5)


def _job(src: Source, msg: Msg) -> Job:
    position = _position(msg)
    if position is None:
        return Job.of(msg, deliveries=1, max_deliver=src.max_deliver)
    stream_sequence, deliveries = position
    return Job.of(
        msg,
        deliveries=deliveries,
        max_deliver=src.max_deliver,
        sequence=(src.consumer, stream_sequence),
        origin=f"{src.stream}:{stream_sequence}",
    )


def _position(msg: Msg) -> tuple[int, int] | None:
    """(stream sequence, deliveries) of a JetStream message, from its ack subject.

    The tokens nats-py's ``msg.metadata`` reads (``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<time>.<pending>``, or the longer form
    with a domain and an account hash before the stream), without the timestamp and
    the three objects it also builds: those took 4 µs a message, more than all the
    rest of taking one in. Any other form is left to ``msg.metadata``.
    """
    tokens = (msg.reply or "").split(".")
    if tokens[0] == "$JS" and len(tokens) > 1 and tokens[1] == "ACK":
        if len(tokens) == 9:
            delivered, sequence = tokens[4], tokens[5]
        elif len(tokens) >= 11:
            delivered, sequence = tokens[Msg.Ack.NumDelivered], tokens[Msg.Ack.StreamSeq]
        else:
            delivered = sequence = ""
        if delivered.isdigit() and sequence.isdigit():
            return int(sequence), max(1, int(delivered))
    try:
        metadata = msg.metadata
        return int(metadata.sequence.stream), int(metadata.num_delivered or 1)
    except Exception:
        return None


async def _within(seconds: float, wait: Awaitable[None]) -> None:
    """Await ``wait`` for at most ``seconds``."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wait


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
