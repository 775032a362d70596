"""An in-memory broker for unit tests of handlers: a service's router, without NATS.

It hands a typed command to the router's handler through the bus library's own
:class:`~ferry.bus.dispatcher.Dispatcher` and middleware chain, so retries,
give-ups (``Failed`` with its ``outcome``), dead letters, cancellation and
metrics follow exactly the rules a running service follows; only the transport
is replaced. What it is not: a model of JetStream timing (ack_wait,
redelivery delays, replicas). Those stay with the integration tests against a
real nats-server.

Everything a handler publishes is encoded and decoded on the way out, as the
bus would, so a message that could not cross the wire fails here too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ferry.bus import Bus, Router, cancellation
from ferry.bus.dispatcher import Dispatcher
from ferry.bus.job import Job
from ferry.bus.middleware import Cancellation, Middleware, Observer, find
from ferry.proto import envelope
from ferry.proto.base import Failed, Message
from ferry.proto.envelope import Envelope

if TYPE_CHECKING:
    from types import TracebackType

SOURCE = "ferry-testing/broker"


@dataclass(frozen=True)
class DeadLetter:
    subject: str
    data: bytes
    headers: dict[str, str]


@dataclass
class Delivered:
    """How one delivery was settled, and what was published while handling it."""

    settled: str  # ack | nak | term
    delay: float | None = None  # of a nak; None: redeliver at once
    deliveries: int = 1
    published: list[Message] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def failed(self) -> Failed | None:
        """The service's ``Failed`` event, when the command was given up."""
        found = [m for m in self.published if isinstance(m, Failed)]
        return found[-1] if found else None


class _Delivery:
    """One message as the transport hands it over; remembers how it was settled."""

    def __init__(self, subject: str, headers: dict[str, str], data: bytes) -> None:
        self._subject, self._headers, self._data = subject, headers, data
        self.verdict: str | None = None
        self.delay: float | None = None
        self.in_progress_count = 0
        self.done = asyncio.Event()

    @property
    def subject(self) -> str:
        return self._subject

    @property
    def headers(self) -> dict[str, str] | None:
        return self._headers

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def is_acked(self) -> bool:
        return self.verdict is not None

    def _settle(self, verdict: str, delay: float | None = None) -> None:
        if self.verdict is not None:
            raise AssertionError(f"{self._subject} settled twice ({self.verdict}, then {verdict})")
        self.verdict, self.delay = verdict, delay
        self.done.set()

    async def ack(self) -> None:
        self._settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        self._settle("nak", delay)

    async def term(self) -> None:
        self._settle("term")

    async def in_progress(self) -> None:
        self.in_progress_count += 1


class _Outbox:
    """The dispatcher's publisher: wire round-trip, then kept for the test to read."""

    def __init__(self) -> None:
        self.messages: list[tuple[Envelope, Message]] = []
        self.dead_letters: list[DeadLetter] = []

    async def publish(self, message: Message, *, cause: str = "") -> object:
        env, data = envelope.wrap(message, SOURCE, cause)
        self.messages.append(envelope.unwrap(env.headers(), data))
        return None

    async def publish_many(self, messages: Iterable[Message], *, cause: str = "") -> object:
        for message in list(messages):
            await self.publish(message, cause=cause)
        return None

    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> object:
        self.dead_letters.append(DeadLetter(subject, data, dict(headers)))
        return None


class InMemoryBroker:
    """``async with InMemoryBroker(router) as broker: await broker.send(cmd)``.

    ``bus`` is only for handlers that read or write key-value state
    (``ctx.bus``); without it such a handler fails with a clear error.
    ``max_deliver`` plays the consumer's limit (the bus default is 5).
    """

    def __init__(
        self,
        router: Router,
        *,
        bus: Bus | None = None,
        max_deliver: int = 5,
        observer: Observer | None = None,
    ) -> None:
        self.router = router
        self.max_deliver = max_deliver
        self.outbox = _Outbox()
        self.middleware: list[Middleware] = router.middleware(observer)
        self.dispatcher = Dispatcher(router, self.outbox, self.middleware, bus=bus)
        self._started: list[Middleware] = []

    async def __aenter__(self) -> InMemoryBroker:
        for mw in self.middleware:
            self._started.append(mw)
            await mw.start(self.dispatcher)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in list(self.dispatcher.lane_tasks):
            task.cancel()
        await asyncio.gather(*self.dispatcher.lane_tasks, return_exceptions=True)
        for mw in reversed(self._started):
            await mw.stop()

    @property
    def published(self) -> list[Message]:
        """Everything published so far, in order."""
        return [m for _, m in self.outbox.messages]

    async def deliver(self, message: Message, *, deliveries: int = 1) -> Delivered:
        """One delivery of ``message`` (the ``deliveries``-th), settled before returning."""
        env, data = envelope.wrap(message, SOURCE)
        delivery = _Delivery(message.subject(), env.headers(), data)
        job = Job.of(delivery, deliveries=deliveries, max_deliver=self.max_deliver)
        return await self._settled(job, delivery)

    async def send(self, message: Message) -> Delivered:
        """Deliver until acked or terminated, redelivering each nak at once, as a server would.

        The returned record holds the last delivery's settlement and everything
        published over all deliveries.
        """
        published = len(self.outbox.messages)
        letters = len(self.outbox.dead_letters)
        deliveries = 0
        while True:
            deliveries += 1
            last = await self.deliver(message, deliveries=deliveries)
            if last.settled != "nak":
                break
        last.published = [m for _, m in self.outbox.messages[published:]]
        last.dead_letters = self.outbox.dead_letters[letters:]
        return last

    async def start(self, message: Message) -> Running:
        """Deliver without waiting: for tests that act while the handler runs."""
        env, data = envelope.wrap(message, SOURCE)
        delivery = _Delivery(message.subject(), env.headers(), data)
        job = Job.of(delivery, deliveries=1, max_deliver=self.max_deliver)
        return Running(
            self, job, delivery, len(self.outbox.messages), len(self.outbox.dead_letters)
        )

    def cancel(self, migration: str, vm: str | None = None) -> None:
        """What a cancel request in the CANCEL bucket does to this service's router."""
        watcher = find(self.middleware, Cancellation)
        if watcher is None:
            raise RuntimeError("this router runs without cancellation middleware")
        watcher.request(cancellation.key(migration, vm))

    async def _settled(self, job: Job, delivery: _Delivery) -> Delivered:
        published = len(self.outbox.messages)
        letters = len(self.outbox.dead_letters)
        self.dispatcher.accept(job)
        await delivery.done.wait()
        return self._record(job, delivery, published, letters)

    def _record(self, job: Job, delivery: _Delivery, published: int, letters: int) -> Delivered:
        assert delivery.verdict is not None
        return Delivered(
            settled=delivery.verdict,
            delay=delivery.delay,
            deliveries=job.deliveries,
            published=[m for _, m in self.outbox.messages[published:]],
            dead_letters=self.outbox.dead_letters[letters:],
        )


class Running:
    """A delivery in progress: ``await running.settled()`` when the test is done acting."""

    def __init__(
        self, broker: InMemoryBroker, job: Job, delivery: _Delivery, published: int, letters: int
    ) -> None:
        self._broker, self._job, self._delivery = broker, job, delivery
        self._published, self._letters = published, letters
        broker.dispatcher.accept(job)

    @property
    def running(self) -> bool:
        return self._job.state == "running"

    async def settled(self) -> Delivered:
        await self._delivery.done.wait()
        return self._broker._record(self._job, self._delivery, self._published, self._letters)
