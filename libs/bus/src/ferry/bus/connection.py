"""The one connection a process holds to NATS, and publishing through it.

Publishing is where at-least-once delivery meets idempotency: every message is
wrapped in a CloudEvents envelope whose id is derived from its content
(``ferry.proto.envelope``) and sent as ``Nats-Msg-Id``, and :meth:`Bus.publish`
returns only once a stream has stored it. That makes a publish safe to retry
after a timeout or a crash: the stream's duplicate window drops the second copy.

Connection retries belong to nats-py: its reconnect loop (unlimited attempts)
covers both the first connection and every reconnect, and buffers publishes
while it reconnects (:mod:`ferry.bus.dial` bounds the first connection's wait).
Credentials may be part of the URL; they are stripped before anything is logged.
A process with its own identity passes :class:`Credentials` (read by the caller from a
file): its replies then come on ``_INBOX_<user>``, the only inbox its permissions
let it subscribe to.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import ConnectionClosedError, NoRespondersError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from ferry.bus import audit, dial
from ferry.bus.dial import Credentials
from ferry.bus.errors import PublishFailed, Unavailable
from ferry.bus.kv import KeyValue
from ferry.bus.ledger import Ledger
from ferry.bus.topology import TopologySettings
from ferry.proto import envelope, subjects
from ferry.proto.base import Message
from ferry.proto.envelope import Envelope

log = logging.getLogger(__name__)

T = TypeVar("T")

# Pipelined publishes a connection keeps unacknowledged before ``publish_many`` waits.
PUBLISH_ASYNC_MAX_PENDING = 4000
# How long ``publish_many`` waits for room among them before giving up on a message.
PUBLISH_STALL_SECONDS = 5.0
# How long ``publish_many`` waits for a batch's acknowledgements before retrying the
# unacknowledged ones alone.
PUBLISH_ACK_SECONDS = 5.0
# Subjects a connection remembers (by message type, migration and VM) before it starts over.
SUBJECTS_REMEMBERED = 4096

_RETRYABLE = (
    NatsTimeoutError,
    asyncio.TimeoutError,
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    OutboundBufferLimitError,
)
# Failures after which a request surely did nothing: nobody received it (no stream
# listens on the subject: a leader being elected), JetStream answered 503, or it never
# left this client.
_UNDELIVERED = (
    NoRespondersError,
    NoStreamResponseError,
    ServiceUnavailableError,
    OutboundBufferLimitError,
)


class Published(msgspec.Struct, frozen=True):
    """A stream's acknowledgement: where the message is stored.

    (A struct, not a frozen dataclass: one is made per published message, and a frozen
    dataclass's ``__init__`` costs several times as much.)
    """

    id: str
    stream: str
    sequence: int
    duplicate: bool


class Bus:
    """A connected process: publish, key-value state, the audit stream.

    Create with :meth:`connect`; use as ``async with`` so the connection is
    drained (pending publishes flushed, subscriptions closed) on the way out.
    """

    def __init__(
        self,
        nc: Client,
        *,
        name: str,
        settings: TopologySettings,
        publish_timeout: float,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(
            timeout=5.0, publish_async_max_pending=PUBLISH_ASYNC_MAX_PENDING
        )
        self.name = name
        self.source = f"ferry/{name}"
        self.settings = settings
        self.publish_timeout = publish_timeout
        self._kvs: dict[tuple[str, type[Any]], KeyValue[Any]] = {}
        self._log = dial.ConnectionLog("")
        self.ledger: Ledger | None = None  # every acknowledged publish, when set (ledger.py)
        self._subjects: dict[tuple[type[Message], str, str], str] = {}

    @classmethod
    async def connect(
        cls,
        url: str | Sequence[str],
        *,
        name: str,
        settings: TopologySettings | None = None,
        connect_timeout: float = 60.0,
        publish_timeout: float = 30.0,
        reconnect_wait: float = 0.5,
        credentials: Credentials | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Bus:
        """Connect, retrying with nats-py's own loop for up to ``connect_timeout`` seconds.

        After the first success nats-py reconnects forever; ``bus.connected``
        tells readiness probes whether it currently is. A server that refuses the
        credentials (or an anonymous client) fails at once with :class:`NotConnected`.
        ``tls`` (a context that trusts the server's CA) makes the connection TLS; a
        server whose certificate it does not verify is refused the same way.
        """
        nc, events = await dial.dial(
            url,
            name=name,
            connect_timeout=connect_timeout,
            reconnect_wait=reconnect_wait,
            credentials=credentials,
            tls=tls,
        )
        log.info("connected to NATS (%s) as %s", events.shown, name)
        bus = cls(
            nc, name=name, settings=settings or TopologySettings(), publish_timeout=publish_timeout
        )
        bus._log = events
        return bus

    # -- lifecycle -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return bool(self.nc.is_connected)

    async def close(self) -> None:
        """Drain: flush pending publishes and acks, close subscriptions, disconnect."""
        if self.nc.is_closed:
            return
        self._log.closing = True
        try:
            await self.nc.drain()
        except (TimeoutError, ConnectionClosedError, NatsTimeoutError):
            await dial.close_quietly(self.nc)

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- publishing ----------------------------------------------------------

    async def publish(self, message: Message, *, cause: str = "") -> Published:
        """Publish one command or event and wait until a stream has stored it.

        ``cause``: the id of the message this one answers (see ``envelope.wrap``).
        """
        env, data, headers = envelope.wrap_with_headers(message, self.source, cause)
        published = await self.publish_raw(self._subject(message), data, headers)
        if self.ledger is not None:
            self.ledger.record(env.type, message, published.id, published.duplicate)
        return published

    async def publish_many(
        self, messages: Iterable[Message], *, cause: str = ""
    ) -> list[Published]:
        """Publish several messages in order, pipelined, each waited for.

        Each message is stamped (its envelope's ``time``) just before it is handed to
        the connection, not all of them up front: another task of this process may
        publish between two of them, and the stream must then still hold this
        process's events in the order of their times.
        """
        sent = list(messages)
        # Parallel lists rather than a tuple per message: fewer objects for the
        # garbage collector to count and walk while a batch is in flight.
        topics: list[str] = []
        envs: list[Envelope] = []
        datas: list[bytes] = []
        futures: list[asyncio.Future[api.PubAck] | None] = []
        js, source, wrap = self.js, self.source, envelope.wrap_with_headers
        for message in sent:
            subject, (env, data, headers) = self._subject(message), wrap(message, source, cause)
            topics.append(subject)
            envs.append(env)
            datas.append(data)
            try:
                futures.append(
                    await js.publish_async(subject, data, headers=headers, wait_stall=self._stall())
                )
            except Exception:
                futures.append(None)
        await _acknowledged([f for f in futures if f is not None], PUBLISH_ACK_SECONDS)
        results: list[Published] = []
        for subject, env, data, future in zip(topics, envs, datas, futures, strict=True):
            ack = _result(future)
            if ack is None:
                # Not acknowledged in time: retry alone, same id, so never stored twice.
                results.append(await self.publish_raw(subject, data, env.headers()))
            else:
                results.append(Published(env.id, ack.stream, ack.seq, bool(ack.duplicate)))
        if self.ledger is not None:
            for message, env, published in zip(sent, envs, results, strict=True):
                self.ledger.record(env.type, message, published.id, published.duplicate)
        return results

    def _subject(self, message: Message) -> str:
        """``message.subject()``, remembered by type, migration and VM.

        A service publishes for the same VMs over and over, and making their names
        into subject tokens is most of what a subject costs. Only the base class's
        ``subject`` (a function of exactly these three) is remembered.
        """
        key = (type(message), message.migration, message.vm)
        subject = self._subjects.get(key)
        if subject is None:
            subject = message.subject()
            if type(message).subject is Message.subject:
                if len(self._subjects) >= SUBJECTS_REMEMBERED:
                    self._subjects.clear()
                self._subjects[key] = subject
        return subject

    def _stall(self) -> float | None:
        """The wait for room among pending publishes: none needed while there is room.

        nats-py waits for its semaphore through ``asyncio.wait_for``, which with a
        timeout runs the wait as a task of its own: one more turn of the event loop
        per message, and with it one socket write per message instead of one per
        batch (about a third of ``publish_many``'s cost). While fewer than the limit
        are pending the semaphore cannot block, and nothing yields between this
        check and its acquire, so the timeout is only passed when it can matter.
        """
        if self.js.publish_async_pending() < PUBLISH_ASYNC_MAX_PENDING:
            return None
        return PUBLISH_STALL_SECONDS

    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> Published:
        """Publish prepared bytes and headers (the router's dead-letter copies use this).

        Retries timeouts and "no stream responded" until ``publish_timeout``:
        the ``Nats-Msg-Id`` header makes every retry a no-op if an earlier try
        was stored after all.
        """
        msg_id = headers.get(envelope.MSG_ID_HEADER, "")
        deadline = time.monotonic() + self.publish_timeout

        async def attempt() -> Any:
            remaining = deadline - time.monotonic()
            timeout = max(0.1, min(5.0, remaining))
            return await self.js.publish(subject, data, headers=dict(headers), timeout=timeout)

        try:
            ack = await self.patiently(subject, attempt, first_delay=0.05)
        except Unavailable as err:
            hint = " (no stream for this subject? declare the topology)"
            why = f"{err.reason} for {self.publish_timeout:.0f}s{hint}"
            raise PublishFailed(subject, why) from None
        except APIError as err:  # refused, not unavailable
            raise PublishFailed(subject, err.description or str(err)) from None
        return _published(msg_id, ack)

    async def patiently(
        self,
        what: str,
        call: Callable[[], Awaitable[T]],
        *,
        first_delay: float = 0.1,
        codes: frozenset[int] = frozenset(),
        within: float | None = None,
        repeatable: bool = True,
    ) -> T:
        """A JetStream request (a publish, an API call), tried again while it cannot be
        answered: the bus's one retry loop.

        A request that must not take effect twice (a compare-and-set write without a
        message id) is ``repeatable=False``: it is tried again only when it surely did
        nothing (no responders, a 503 answer), never after a timeout, which may have
        come after the server applied it.

        A stream whose leader was just lost answers nothing (a timeout, no responders,
        503) until the replicas left elect another, a few seconds. The request is tried
        again, the delay doubling up to a second, until ``publish_timeout`` (or
        ``within`` seconds); then :class:`Unavailable`. JetStream error codes in
        ``codes`` also mean "not yet" (a caller that knows one is passing); any other
        refusal is raised at once.
        """
        patience = self.publish_timeout if within is None else within
        deadline = time.monotonic() + patience
        delay = first_delay
        while True:
            try:
                return await call()
            except _RETRYABLE as err:
                if not repeatable and not isinstance(err, _UNDELIVERED):
                    raise
                reason = type(err).__name__
            except APIError as err:
                # (nats-py makes some, a KV's wrong-sequence error, without the codes)
                code, err_code = getattr(err, "code", None), getattr(err, "err_code", None)
                if code != 503 and err_code not in codes:
                    raise
                reason = getattr(err, "description", None) or "JetStream unavailable"
            if time.monotonic() + delay >= deadline:
                raise Unavailable(what, reason, patience)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- state and audit -------------------------------------------------------

    def kv(self, bucket: subjects.Bucket | str, type_: type[T]) -> KeyValue[T]:
        """A typed view of a key-value bucket (cheap; cached per bucket and type)."""
        name = bucket.value if isinstance(bucket, subjects.Bucket) else bucket
        key = (name, type_)
        view = self._kvs.get(key)
        if view is None:
            view = KeyValue(self, name, type_)
            self._kvs[key] = view
        return view

    def events(
        self,
        subject: str | None = None,
        since: datetime | int | None = None,
        follow: bool = True,
    ) -> AsyncIterator[tuple[Envelope, Message]]:
        """The audit stream in order: from the start, a time, or a sequence.

        With ``follow`` it waits for new events forever; without, it stops at
        the last event that existed when iteration began.
        """
        return audit.iterate(self, subject or subjects.all_events(), since, follow)

    async def events_position(self) -> int:
        """The audit stream's last sequence (0 when empty): read it *before* a snapshot of
        the views, then follow from ``position + 1``, and nothing falls in between."""
        info = await self.patiently(
            "reading the audit stream", lambda: self.js.stream_info(subjects.EVENTS_STREAM)
        )
        return int(info.state.last_seq or 0)

    def records(
        self,
        subject: str | None = None,
        since: datetime | int | None = None,
        follow: bool = True,
    ) -> AsyncIterator[audit.Record]:
        """As :meth:`events`, each with its stream sequence (to resume from ``sequence + 1``)."""
        return audit.records(self, subject or subjects.all_events(), since, follow)


async def _acknowledged(futures: list[asyncio.Future[api.PubAck]], seconds: float) -> None:
    """Wait up to ``seconds`` for every stream acknowledgement of a batch of publishes.

    A stream answers one connection's publishes in order, so the last one is waited
    for first, alone, and then whichever are still open (normally none): waiting for
    all at once would put a callback on every future, each one a turn of the event
    loop when its acknowledgement comes.
    """
    if not futures:
        return
    deadline = time.monotonic() + seconds
    await asyncio.wait(futures[-1:], timeout=seconds)
    open_ = [f for f in futures if not f.done()]
    if open_:
        await asyncio.wait(open_, timeout=max(0.0, deadline - time.monotonic()))


def _result(future: asyncio.Future[api.PubAck] | None) -> api.PubAck | None:
    if future is None:
        return None
    if not future.done():
        future.cancel()
        return None
    if future.cancelled() or future.exception() is not None:
        return None
    return future.result()


def _published(msg_id: str, ack: api.PubAck) -> Published:
    return Published(msg_id, ack.stream, ack.seq, bool(ack.duplicate))
