"""The one dispatch loop: typed handlers in, publish-then-ack / retry / give up out.

Handlers only compute outcomes (return events, raise ``PermanentError`` or
``TemporaryError``); everything that makes at-least-once delivery safe lives
here, once:

* **publish, then ack** — a crash between the two redelivers the command, the
  handler (idempotent) runs again, and the deterministic message id makes the
  second publish of the same result a no-op;
* **retries** — ``TemporaryError`` naks with its delay, any other exception naks
  with exponential backoff; on the last allowed delivery, or on
  ``PermanentError``, the message is terminated, the service's ``Failed`` event
  is published and a copy goes to the dead-letter stream with the reason;
* **long work** — every held message gets ``in_progress()`` every ack_wait/3, so
  JetStream only redelivers when the process is really gone — or starved of
  CPU past ack_wait: such a redelivery reaching the replica that still holds,
  or just settled, the same stream sequence is recognised and not run again;
* **order and bounds** — messages of one (migration, vm) run one after another,
  different VMs run in parallel; a replica fetches only as many messages as it
  has free slots, so the shared durable consumer spreads work over replicas;
* **cancellation** — the CANCEL bucket is watched; a canceled VM's queued
  messages are terminated without running and its running handler is cancelled;
* **shutdown** — stop fetching, give running handlers ``grace_seconds``, then
  nak what is left (no delay) so another replica picks it up at once. Acks and
  in-progress acks keep flowing until the last handler is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from ferry.bus import cancellation, topology
from ferry.bus.errors import Canceled, PermanentError, TemporaryError
from ferry.proto import envelope, registry, subjects
from ferry.proto.base import FailureOutcome, Message
from ferry.proto.envelope import Envelope
from ferry.proto.subjects import Bucket, Service

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Result = Message | Sequence[Message] | None
Handler = Callable[[M, "Context"], Coroutine[Any, Any, Result]]

REASON_HEADER = "Ferry-Dead-Letter-Reason"
DELIVERIES_HEADER = "Ferry-Deliveries"
ORIGINAL_SUBJECT_HEADER = "Ferry-Original-Subject"

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 60.0
SETTLED_MEMORY = 4096  # stream sequences a replica remembers having acked or terminated
_EMIT_KEEPALIVE_SECONDS = 1.0
_OUTCOMES = {"exhausted": FailureOutcome.GAVE_UP, "canceled": FailureOutcome.CANCELED}


def backoff(deliveries: int) -> float:
    """Delay before the next delivery after ``deliveries`` failed ones: 1, 2, 4 … 60 s."""
    exponent = max(0, deliveries - 1)
    return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** min(exponent, 16))


class Observer(Protocol):
    """Metrics hooks; the runtime implements them with prometheus-client.

    ``failed`` reasons are a small fixed set: ``temporary`` and ``error``
    (will be retried), ``permanent``, ``exhausted`` (out of deliveries),
    ``invalid`` (undecodable or no handler), ``canceled``, and ``ignored``
    (an event with no handler on an events intake, acked).
    """

    def handled(self, type: str, seconds: float) -> None: ...
    def failed(self, type: str, reason: str) -> None: ...
    def redelivered(self, type: str) -> None: ...
    def in_flight(self, n: int) -> None: ...


class _NoObserver:
    def handled(self, type: str, seconds: float) -> None:
        pass

    def failed(self, type: str, reason: str) -> None:
        pass

    def redelivered(self, type: str) -> None:
        pass

    def in_flight(self, n: int) -> None:
        pass


@dataclass(frozen=True, slots=True)
class _Route:
    cls: type[Message]
    fn: Handler[Any]
    cancelable: bool


class _Identity(msgspec.Struct, kw_only=True):
    """Enough of any message to attribute a failure to its VM."""

    plan: str = ""
    migration: str = ""
    vm: str = ""
    step: str = ""
    attempt: int = 1


@dataclass(eq=False)
class _Held:
    """One delivered message this replica is responsible for until it acks/naks/terms."""

    msg: Msg
    source: _Source
    lane: str
    migration_token: str
    vm_token: str
    deliveries: int
    sequence: tuple[str, int] | None = None  # (consumer, stream sequence): what a redelivery shares
    state: str = "queued"  # queued | running | done
    task: asyncio.Task[Any] | None = None  # the lane task while the handler runs
    cancel_reason: str | None = None
    canceled: asyncio.Event = field(default_factory=asyncio.Event)


def _cause(held: _Held) -> str:
    """The id of the delivered message: what its results are published in answer to."""
    headers = held.msg.headers or {}
    return headers.get(envelope.MSG_ID_HEADER) or headers.get("ce-id", "")


@dataclass(eq=False)
class _Source:
    """A durable pull consumer the router takes work from."""

    stream: str
    consumer: str
    sub: JetStreamContext.PullSubscription
    ack_wait: float
    max_deliver: int


class Context:
    """What a handler may know and do besides computing its result."""

    def __init__(self, run: _Run, held: _Held, env: Envelope, message: Message) -> None:
        self._run = run
        self._held = held
        self._last_keepalive = time.monotonic()
        self.envelope = env
        self.message = message
        self.bus: Bus = run.bus
        self.service = run.router.service
        self.subject = held.msg.subject
        self.log = logging.LoggerAdapter(
            log, {"migration": message.migration, "vm": message.vm, "type": env.type}
        )

    @property
    def canceled(self) -> asyncio.Event:
        """Set when the (migration, vm) is canceled (the task is then cancelled too)."""
        return self._held.canceled

    @property
    def deliveries(self) -> int:
        """1 on the first delivery, more when redelivered."""
        return self._held.deliveries

    async def emit(self, *messages: Message) -> None:
        """Publish now (progress, intermediate facts); also keeps the command alive."""
        cause = _cause(self._held)
        if len(messages) == 1:
            await self.bus.publish(messages[0], cause=cause)
        elif messages:
            await self.bus.publish_many(messages, cause=cause)
        if time.monotonic() - self._last_keepalive >= _EMIT_KEEPALIVE_SECONDS:
            self._last_keepalive = time.monotonic()
            await self._run.keep_alive(self._held)


@dataclass(frozen=True, slots=True)
class Intake:
    """Where a router takes its work from.

    ``commands()`` (the default): the service's work queue and its shared
    consumer ``<service>-workers``. ``events(durable, filter_subjects)``: a
    durable consumer of the events stream, for a service that advances on other
    services' facts (the controller). Same dispatch semantics either way, except
    that an event nobody handles is acked and ignored (events are broadcast,
    so not every type is for everyone), while a command nobody handles is a
    permanent failure.
    """

    kind: str = "commands"
    durable: str | None = None
    filter_subjects: tuple[str, ...] = ()

    @classmethod
    def commands(cls) -> Intake:
        return cls()

    @classmethod
    def events(cls, durable: str | None = None, filter_subjects: Sequence[str] = ()) -> Intake:
        return cls(kind="events", durable=durable, filter_subjects=tuple(filter_subjects))


class Router:
    """Handlers of one service, and the loop that feeds them from the bus."""

    def __init__(self, service: Service, intake: Intake | None = None) -> None:
        self.service = service
        self.intake = intake or Intake.commands()
        self._routes: dict[str, _Route] = {}

    def handler(
        self, cls: type[M], *, cancelable: bool | None = None
    ) -> Callable[[Handler[M]], Handler[M]]:
        """Register ``fn`` for messages of type ``cls``.

        ``cls`` is one of the service's commands, or, for a router with
        ``Intake.events(...)``, an event type. ``cancelable=False`` exempts a
        handler from cancellation (e.g. the handler of the cancel command). By
        default command handlers are cancelable and event handlers are not:
        events are facts (including the ``Failed(canceled=True)`` of a canceled
        VM) that a reacting service must see.
        """

        def register(fn: Handler[M]) -> Handler[M]:
            name = cls.type_name()
            if name in self._routes:
                raise ValueError(f"{self.service.value}: a handler for {name} already exists")
            if self.intake.kind == "commands" and cls.kind == "cmd" and cls.owner() != self.service:
                raise ValueError(
                    f"{name} is a command of the {cls.owner().value} service, "
                    f"not of {self.service.value}"
                )
            default = self.intake.kind == "commands"
            self._routes[name] = _Route(cls, fn, default if cancelable is None else cancelable)
            return fn

        return register

    @property
    def types(self) -> list[str]:
        return sorted(self._routes)

    def route(self, type_name: str) -> _Route | None:
        return self._routes.get(type_name)

    async def run(
        self,
        bus: Bus,
        concurrency: int = 4,
        stop: asyncio.Event | None = None,
        grace_seconds: float = 30.0,
        observer: Observer | None = None,
        fetch_wait: float = 1.0,
    ) -> None:
        """Dispatch until ``stop`` is set (or the task is cancelled), then shut down."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        run = _Run(self, bus, concurrency, observer or _NoObserver(), fetch_wait)
        await run.serve(stop or asyncio.Event(), grace_seconds)


def events_consumer_name(service: Service) -> str:
    return f"{service.value}-events"


class _Run:
    """The state of one ``Router.run``: held messages, lanes, background tasks."""

    def __init__(
        self,
        router: Router,
        bus: Bus,
        concurrency: int,
        observer: Observer,
        fetch_wait: float,
    ) -> None:
        self.router = router
        self.bus = bus
        self.concurrency = concurrency
        self.observer = observer
        self.fetch_wait = fetch_wait
        self.service = router.service
        self.failed_type = registry.FAILED[router.service]
        self.held: set[_Held] = set()
        # A message held here whose ack_wait ran out anyway (this process was starved of
        # CPU longer than the keep-alive period) is redelivered, possibly to this very
        # replica: by stream sequence, such a copy is recognised and never run twice.
        self.by_sequence: dict[tuple[str, int], _Held] = {}
        self.settled: OrderedDict[tuple[str, int], str] = OrderedDict()
        self.reserved = 0
        self.lanes: dict[str, deque[_Held]] = {}
        self.lane_tasks: set[asyncio.Task[None]] = set()
        self.canceled_keys: set[str] = set()
        self.stopping = False
        self.halt = asyncio.Event()  # set when shutdown starts, whatever triggered it
        self.slot_freed = asyncio.Event()
        self.sources: list[_Source] = []

    # -- setup -----------------------------------------------------------------

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
                # given up on after ``max_deliver`` deliveries, by the router (_source).
                max_deliver=-1,
                max_ack_pending=base.max_ack_pending,
                filter_subjects=list(intake.filter_subjects) or [subjects.all_events()],
            )
            await self.bus.js.add_consumer(stream, config=config)
        self.sources.append(await self._source(stream, consumer))

    async def _source(self, stream: str, consumer: str) -> _Source:
        info = await self.bus.js.consumer_info(stream, consumer)
        sub = await self.bus.js.pull_subscribe_bind(consumer, stream=stream)
        ack_wait = float(info.config.ack_wait or self.bus.settings.ack_wait_seconds)
        max_deliver = int(info.config.max_deliver or self.bus.settings.max_deliver)
        if max_deliver < 1:
            max_deliver = self.bus.settings.max_deliver
        return _Source(stream, consumer, sub, ack_wait, max_deliver)

    # -- main ------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event, grace_seconds: float) -> None:
        await self._bind()
        cancel_ready = asyncio.Event()
        background = [
            asyncio.create_task(self._watch_cancellations(cancel_ready), name="ferry-cancel-watch"),
            asyncio.create_task(self._keep_alive_loop(), name="ferry-keepalive"),
        ]
        fetchers: list[asyncio.Task[None]] = []
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cancel_ready.wait(), timeout=10.0)
            fetchers = [
                asyncio.create_task(self._fetch_loop(src), name=f"ferry-fetch-{src.consumer}")
                for src in self.sources
            ]
            log.info(
                "%s router running: %s (concurrency %d)",
                self.service.value,
                ", ".join(self.router.types),
                self.concurrency,
            )
            await stop.wait()
            await self._shutdown(fetchers, grace_seconds)
        except asyncio.CancelledError:
            await self._shutdown(fetchers, 0.0)
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            for src in self.sources:
                with contextlib.suppress(Exception):
                    await src.sub.unsubscribe()
            with contextlib.suppress(Exception):
                await self.bus.nc.flush(timeout=5)

    async def _shutdown(self, fetchers: list[asyncio.Task[None]], grace_seconds: float) -> None:
        self.stopping = True
        self.halt.set()
        log.info("%s router stopping: %d in flight", self.service.value, len(self.held))
        await asyncio.gather(*fetchers, return_exceptions=True)
        for lane in self.lanes.values():
            for held in list(lane):
                if held.state == "queued":
                    await self._settle_nak(held, 0.0)
        if self.lane_tasks and grace_seconds > 0:
            await asyncio.wait(set(self.lane_tasks), timeout=grace_seconds)
        for held in list(self.held):
            if held.task is not None and not held.task.done():
                held.cancel_reason = "shutdown"
                held.task.cancel("ferry: shutting down")
        if self.lane_tasks:
            await asyncio.wait(set(self.lane_tasks), timeout=10.0)

    # -- fetching --------------------------------------------------------------

    def _free(self) -> int:
        return self.concurrency - len(self.held) - self.reserved

    async def _fetch_loop(self, src: _Source) -> None:
        while not self.halt.is_set():
            free = self._free()
            if free <= 0:
                self.slot_freed.clear()
                await _wait_any(self.halt, self.slot_freed)
                continue
            self.reserved += free
            try:
                msgs = await self._fetch(src, free)
            finally:
                self.reserved -= free
            for msg in msgs:
                if self.halt.is_set():
                    await _quietly(msg.nak())
                elif not await self._redelivered_here(src, msg):
                    self._accept(src, msg)

    async def _redelivered_here(self, src: _Source, msg: Msg) -> bool:
        """A second delivery of a message this replica holds or already settled: don't run it.

        Still held (queued or running): the held copy's ack or nak settles the stream
        sequence, so this copy is dropped. Already acked or terminated here (the
        settlement came after ack_wait, or was lost): settle this copy the same way.
        A message this replica nak'ed is a wanted retry and runs again.
        """
        key = _sequence(src, msg)
        if key is None:
            return False
        if key in self.by_sequence:
            log.warning("%s redelivered while still held here; not run twice", msg.subject)
            return True
        verb = self.settled.get(key)
        if verb is None:
            return False
        log.warning("%s redelivered after it was settled here; settled again", msg.subject)
        await _quietly(msg.ack() if verb == "ack" else msg.term())
        return True

    def _remember(self, held: _Held, verb: str) -> None:
        if held.sequence is None:
            return
        self.settled[held.sequence] = verb
        self.settled.move_to_end(held.sequence)
        while len(self.settled) > SETTLED_MEMORY:
            self.settled.popitem(last=False)

    async def _ack(self, held: _Held) -> None:
        await _quietly(held.msg.ack())
        self._remember(held, "ack")

    async def _fetch(self, src: _Source, batch: int) -> list[Msg]:
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

    def _accept(self, src: _Source, msg: Msg) -> None:
        parts = msg.subject.split(".")
        mig, vm = (parts[4], parts[5]) if len(parts) == 6 else (msg.subject, "")
        lane = f"{mig}.{vm}"
        held = _Held(
            msg=msg,
            source=src,
            lane=lane,
            migration_token=mig,
            vm_token=vm,
            deliveries=_deliveries(msg),
            sequence=_sequence(src, msg),
        )
        self.held.add(held)
        if held.sequence is not None:
            self.by_sequence[held.sequence] = held
        self.observer.in_flight(len(self.held))
        queue = self.lanes.get(lane)
        if queue is None:
            queue = self.lanes[lane] = deque()
            task = asyncio.create_task(self._lane(lane, queue), name=f"ferry-lane-{lane}")
            self.lane_tasks.add(task)
            task.add_done_callback(self.lane_tasks.discard)
        queue.append(held)

    async def _lane(self, lane: str, queue: deque[_Held]) -> None:
        try:
            while queue:
                held = queue[0]
                try:
                    if held.state == "queued":
                        await self._process(held)
                except Exception:
                    log.exception("router failed to settle a message on %s", held.msg.subject)
                    await self._settle_nak(held, backoff(held.deliveries))
                finally:
                    queue.popleft()
                    self._release(held)
        finally:
            if self.lanes.get(lane) is queue:
                del self.lanes[lane]

    def _release(self, held: _Held) -> None:
        held.state = "done"
        if held.sequence is not None and self.by_sequence.get(held.sequence) is held:
            del self.by_sequence[held.sequence]
        if held in self.held:
            self.held.discard(held)
            self.observer.in_flight(len(self.held))
            self.slot_freed.set()

    # -- one message -----------------------------------------------------------

    async def _process(self, held: _Held) -> None:
        if self.stopping:
            await self._settle_nak(held, 0.0)
            return
        try:
            env, message = envelope.unwrap(held.msg.headers, held.msg.data)
        except envelope.UnknownMessageType as err:
            kind = (held.msg.headers or {}).get("ce-type", "unknown")
            if self.router.intake.kind == "events" and kind != "unknown":
                await self._ack(held)  # a newer producer's event: open world
                self.observer.failed(kind, "ignored")
                return
            await self._give_up(held, None, kind, f"undecodable message: {err}", [], "invalid")
            return
        except ValueError as err:
            kind = (held.msg.headers or {}).get("ce-type", "unknown")
            await self._give_up(held, None, kind, f"undecodable message: {err}", [], "invalid")
            return
        route = self.router.route(env.type)
        if route is None and self.router.intake.kind == "events":
            await self._ack(held)
            self.observer.failed(env.type, "ignored")
            return
        if route is None:
            reason = f"the {self.service.value} service has no handler for {env.type}"
            await self._give_up(held, message, env.type, reason, [], "invalid")
            return
        if held.deliveries > 1:
            self.observer.redelivered(env.type)
        if route.cancelable and self._is_canceled(held):
            await self._give_up(held, message, env.type, "canceled", [], "canceled")
            return
        await self._run_handler(held, route, env, message)

    async def _run_handler(
        self, held: _Held, route: _Route, env: Envelope, message: Message
    ) -> None:
        ctx = Context(self, held, env, message)
        extra = {"migration": message.migration, "vm": message.vm, "type": env.type}
        started = time.monotonic()
        # The handler runs inside this lane's task (no task per message); to
        # cancel it, the router cancels the lane task while ``held.task`` is set
        # and marks why in ``held.cancel_reason``.
        lane_task = asyncio.current_task()
        held.state = "running"
        held.task = lane_task
        result: Result = None
        error: Exception | None = None
        interrupted = False
        try:
            result = await route.fn(message, ctx)
        except asyncio.CancelledError:
            if held.cancel_reason is None:
                raise  # the lane itself is being torn down
            interrupted = True
        except Exception as err:
            error = err
        finally:
            held.task = None
            if held.cancel_reason is not None and lane_task is not None:
                while lane_task.cancelling():
                    lane_task.uncancel()
        seconds = time.monotonic() - started

        if held.cancel_reason == "canceled" or isinstance(error, Canceled):
            reason = error.reason if isinstance(error, Canceled) else "canceled while running"
            await self._give_up(held, message, env.type, reason, [], "canceled")
        elif interrupted or (error is not None and held.cancel_reason == "shutdown"):
            await self._settle_nak(held, 0.0)
        elif error is None:
            await self._succeed(held, result, env.type, seconds, extra)
        elif isinstance(error, PermanentError):
            await self._give_up(held, message, env.type, error.reason, error.detail, "permanent")
        elif held.deliveries >= held.source.max_deliver:
            reason = f"gave up after {held.deliveries} deliveries: {_describe(error)}"
            await self._give_up(held, message, env.type, reason, [], "exhausted")
        elif isinstance(error, TemporaryError):
            log.info(
                "temporary failure, retry in %.1fs: %s", error.delay, error.reason, extra=extra
            )
            self.observer.failed(env.type, "temporary")
            await self._settle_nak(held, error.delay)
        else:
            delay = backoff(held.deliveries)
            log.warning(
                "handler failed (delivery %d), retry in %.0fs",
                held.deliveries,
                delay,
                exc_info=error,
                extra=extra,
            )
            self.observer.failed(env.type, "error")
            await self._settle_nak(held, delay)

    async def _succeed(
        self, held: _Held, result: Result, type_name: str, seconds: float, extra: dict[str, str]
    ) -> None:
        outputs = _as_messages(result)
        try:
            if len(outputs) == 1:
                await self.bus.publish(outputs[0], cause=_cause(held))
            elif outputs:
                await self.bus.publish_many(outputs, cause=_cause(held))
        except Exception as err:
            log.warning("could not publish results: %s", err, extra=extra)
            self.observer.failed(type_name, "error")
            await self._settle_nak(held, backoff(held.deliveries))
            return
        await self._ack(held)
        self.observer.handled(type_name, seconds)

    async def _give_up(
        self,
        held: _Held,
        message: Message | None,
        type_name: str,
        reason: str,
        detail: list[str],
        label: str,
    ) -> None:
        """Terminate: publish the Failed event, dead-letter a copy (not for cancels), term."""
        canceled = label == "canceled"
        reason, detail = scrub(reason), [scrub(line) for line in detail]
        identity = _identity(message, held.msg.data)
        extra = {"migration": identity.migration, "vm": identity.vm, "type": type_name}
        try:
            if identity.migration:
                await self.bus.publish(
                    self.failed_type(
                        plan=identity.plan,
                        migration=identity.migration,
                        vm=identity.vm,
                        command_type=type_name,
                        step=identity.step,
                        attempt=identity.attempt,
                        reason=reason,
                        detail=detail,
                        deliveries=held.deliveries,
                        canceled=canceled,
                        outcome=_OUTCOMES.get(label, FailureOutcome.PERMANENT),
                    ),
                    cause=_cause(held),
                )
            if not canceled:
                await self._dead_letter(held, reason)
        except Exception as err:
            log.error("could not report a failed message, will retry: %s", err, extra=extra)
            await self._settle_nak(held, backoff(held.deliveries))
            return
        log_fn = log.info if canceled else log.error
        log_fn("gave up on %s: %s", type_name, reason, extra=extra)
        await _quietly(held.msg.term())
        self._remember(held, "term")
        self.observer.failed(type_name, label)

    async def _dead_letter(self, held: _Held, reason: str) -> None:
        headers = dict(held.msg.headers or {})
        headers[REASON_HEADER] = reason.replace("\r", " ").replace("\n", " ")[:1000]
        headers[DELIVERIES_HEADER] = str(held.deliveries)
        headers[ORIGINAL_SUBJECT_HEADER] = held.msg.subject
        if envelope.MSG_ID_HEADER not in headers:
            meta = held.msg.metadata
            headers[envelope.MSG_ID_HEADER] = f"dlq:{meta.stream}:{meta.sequence.stream}"
        await self.bus.publish_raw(self._dead_letter_subject(held), held.msg.data, headers)

    def _dead_letter_subject(self, held: _Held) -> str:
        parts = held.msg.subject.split(".")
        name = parts[3] if len(parts) == 6 else "invalid"
        mig = held.migration_token if len(parts) == 6 else "_"
        vm = held.vm_token if len(parts) == 6 else "_"
        return subjects.dead_letter(self.service, name, mig, vm)

    async def _settle_nak(self, held: _Held, delay: float) -> None:
        if held.state == "done":
            return
        held.state = "done"
        if held.sequence is not None and self.by_sequence.get(held.sequence) is held:
            del self.by_sequence[held.sequence]  # its redelivery is the wanted retry
        await _quietly(held.msg.nak(delay=delay if delay > 0 else None))

    # -- keeping messages alive --------------------------------------------------

    async def keep_alive(self, held: _Held) -> None:
        if held.state != "done" and not held.msg.is_acked:
            await _quietly(held.msg.in_progress())

    async def _keep_alive_loop(self) -> None:
        period = max(0.1, min(src.ack_wait for src in self.sources) / 3.0)
        while True:
            await asyncio.sleep(period)
            for held in list(self.held):
                await self.keep_alive(held)

    # -- cancellation ------------------------------------------------------------

    def _is_canceled(self, held: _Held) -> bool:
        if not self.canceled_keys:
            return False
        return any(
            k in self.canceled_keys
            for k in cancellation.lane_keys(held.migration_token, held.vm_token)
        )

    async def _watch_cancellations(self, ready: asyncio.Event) -> None:
        kv = await self.bus.js.key_value(Bucket.CANCEL.value)
        watcher = await kv.watchall()
        try:
            while True:
                entry = await watcher.updates(timeout=None)  # type: ignore[no-untyped-call]
                if entry is None:
                    ready.set()
                    continue
                if entry.operation in ("DEL", "PURGE"):
                    self.canceled_keys.discard(entry.key)
                    continue
                self.canceled_keys.add(entry.key)
                self._cancel_running(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    def _cancel_running(self, key: str) -> None:
        for held in list(self.held):
            if key not in cancellation.lane_keys(held.migration_token, held.vm_token):
                continue
            route = self._route_of(held)
            if route is not None and not route.cancelable:
                continue
            held.canceled.set()
            if held.task is not None and not held.task.done():
                held.cancel_reason = "canceled"
                held.task.cancel("ferry: canceled")

    def _route_of(self, held: _Held) -> _Route | None:
        kind = (held.msg.headers or {}).get("ce-type", "")
        return self.router.route(kind)


def _sequence(src: _Source, msg: Msg) -> tuple[str, int] | None:
    try:
        return (src.consumer, int(msg.metadata.sequence.stream))
    except Exception:
        return None


def _deliveries(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered or 1)
    except Exception:
        return 1


def _as_messages(result: Result) -> list[Message]:
    if result is None:
        return []
    if isinstance(result, Message):
        return [result]
    out = list(result)
    for item in out:
        if not isinstance(item, Message):
            raise TypeError(f"handlers return Ferry messages, got {type(item).__name__}")
    return out


def _identity(message: Message | None, data: bytes) -> _Identity:
    if message is not None:
        return _Identity(
            plan=message.plan,
            migration=message.migration,
            vm=message.vm,
            step=str(getattr(message, "step", "")),
            attempt=int(getattr(message, "attempt", 1)),
        )
    try:
        return msgspec.json.decode(data, type=_Identity)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return _Identity()


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")


def scrub(text: str) -> str:
    """Remove credentials embedded in URLs (``scheme://user:pass@host``).

    Failure reasons go into the audit stream; an exception text from a client
    library may quote the URL it was given, secrets included.
    """
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


async def _quietly(op: Awaitable[Any]) -> None:
    """Acks are best effort: a lost one only means a redelivery, which is handled."""
    try:
        await op
    except Exception as err:
        log.debug("ack-type reply not sent: %s", err)


async def _wait_any(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
