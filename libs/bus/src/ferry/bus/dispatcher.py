"""The dispatcher: lanes of held messages, one handler call each, and settling the verdict.

Transport-free on purpose: it takes :class:`~ferry.bus.job.Job` s from whoever
fetched them (the NATS consumer in :mod:`ferry.bus.consumer`, or the in-memory
test broker) and publishes through a :class:`Publisher`. Cross-cutting
behaviour (retries, cancellation, dead letters, keep-alive, metrics, time
limits) is middleware; what stays here is what every message needs:

* **order and bounds** — jobs of one (migration, vm) lane run one after another,
  lanes run in parallel;
* **publish, then ack** — a crash between the two redelivers the command, the
  handler (idempotent) runs again, and the deterministic message id makes the
  second publish of the same result a no-op;
* **give up** — terminate, after publishing the service's ``Failed`` event
  with its outcome (and whatever middleware adds, such as a dead letter);
* **settled memory** — stream sequences this replica holds or has acked or
  terminated, so that a redelivery caused by a stall is not run twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ferry.bus.context import Context
from ferry.bus.errors import Canceled
from ferry.bus.job import Identity, Job, Route, not_sent, quietly
from ferry.bus.lanes import Lanes
from ferry.bus.middleware.base import Middleware
from ferry.bus.outcome import Ack, Attempt, GiveUp, Retry, Verdict, as_messages, backoff, scrub
from ferry.proto import envelope, registry
from ferry.proto.base import FailureOutcome, Message
from ferry.proto.envelope import Envelope
from ferry.proto.subjects import Service

if TYPE_CHECKING:
    from ferry.bus.connection import Bus
    from ferry.bus.middleware.base import Call
    from ferry.bus.router import Router

log = logging.getLogger(__name__)

Check = Callable[[Job], Verdict | None]

SETTLED_MEMORY = 4096  # stream sequences a replica remembers having acked or terminated


class Publisher(Protocol):
    """Where results go: the bus, or the in-memory broker's outbox."""

    async def publish(self, message: Message, *, cause: str = "") -> object: ...
    async def publish_many(self, messages: Iterable[Message], *, cause: str = "") -> object: ...
    async def publish_raw(self, subject: str, data: bytes, headers: dict[str, str]) -> object: ...


class Dispatcher:
    """Held jobs and their lanes, for one ``Router.run`` (or one test broker)."""

    def __init__(
        self,
        router: Router,
        publisher: Publisher,
        middleware: Sequence[Middleware],
        *,
        bus: Bus | None = None,
        ack_wait: float | None = None,
    ) -> None:
        self.router = router
        self.service: Service = router.service
        self.publisher = publisher
        self.middleware = list(middleware)
        # Per hook, only the middleware that implement it (most hooks are no-ops in
        # most middleware, and these run for every message).
        self._in_flight_hooks = _implementing(self.middleware, "in_flight")
        # The ``check`` and ``before`` hooks in the chain's order (a middleware's check
        # first): (middleware, its check), or (middleware, None) for its ``before``.
        self._before_hooks: list[tuple[Middleware, Check | None]] = []
        for mw in self.middleware:
            if _implements(mw, "check"):
                self._before_hooks.append((mw, mw.check))
            if _implements(mw, "before"):
                self._before_hooks.append((mw, None))
        # When none waits (the default chain), ``_admit`` runs them all, no coroutine each.
        self._waiting_before = any(check is None for _, check in self._before_hooks)
        self._checks = [] if self._waiting_before else [c for _, c in self._before_hooks if c]
        self._wrap_hooks = _implementing(self.middleware, "wrap")[::-1]
        self._judge_hooks = _implementing(self.middleware, "judge")
        self._after_hooks = _implementing(self.middleware, "after")
        self.bus = bus
        self.ack_wait = ack_wait  # the shortest of the sources': what keep-alive must beat
        self.failed_type = registry.FAILED[router.service]
        self._events_intake = router.intake.kind == "events"
        self.held: set[Job] = set()
        # A job held here whose ack_wait ran out anyway (this process was starved of CPU
        # longer than the keep-alive period) is redelivered, possibly to this very
        # replica: by stream sequence, such a copy is recognised and never run twice.
        self.by_sequence: dict[tuple[str, int], Job] = {}
        self.settled: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lanes: Lanes[Job] = Lanes(self._step, name=f"ferry-lanes-{self.service.value}")
        self.stopping = False
        self.slot_freed = asyncio.Event()

    # -- publishing --------------------------------------------------------------

    async def publish(self, messages: Sequence[Message], *, cause: str) -> None:
        if len(messages) == 1:
            await self.publisher.publish(messages[0], cause=cause)
        elif messages:
            await self.publisher.publish_many(messages, cause=cause)

    # -- holding -----------------------------------------------------------------

    def redelivered_here(self, sequence: tuple[str, int] | None) -> tuple[bool, str | None]:
        """Whether a delivery of ``sequence`` is a copy of one held or settled here.

        Returns (held here, how it was settled here). A job this replica nak'ed
        is a wanted retry: neither.
        """
        if sequence is None:
            return False, None
        return sequence in self.by_sequence, self.settled.get(sequence)

    def accept(self, job: Job, *, report: bool = True) -> None:
        """Hold ``job`` and queue it on its lane, which a worker runs if it was idle.

        ``report=False`` leaves telling the ``in_flight`` hooks to the caller, who
        accepts a fetch's worth and then calls :meth:`report_in_flight` once.
        """
        self.held.add(job)
        if job.sequence is not None:
            self.by_sequence[job.sequence] = job
        self._lanes.put(job.lane, job)
        if report:
            self._in_flight()

    def report_in_flight(self) -> None:
        """Tell the ``in_flight`` hooks how many jobs are held now."""
        self._in_flight()

    @property
    def lanes(self) -> dict[str, deque[Job]]:
        """The lanes holding jobs, by lane key; each one's head is queued or running."""
        return self._lanes.queues

    @property
    def lane_tasks(self) -> set[asyncio.Task[None]]:
        """The worker tasks that run the lanes (idle ones included)."""
        return self._lanes.workers

    async def drained(self) -> None:
        """Return once every lane has ended (no job queued or running)."""
        await self._lanes.drained()

    async def close(self) -> None:
        """After the last job: end the idle lane workers (busy ones end with their lane)."""
        await self._lanes.close()

    def route_of(self, job: Job) -> Route | None:
        return job.route or self.router.route(job.type_name)

    async def _step(self, job: Job, worker: asyncio.Task[None]) -> None:
        """One job of a lane, in the lane's ``worker`` task, released whatever happens.

        The common path (decode, checks, handler, judge, ack) runs in this one
        coroutine besides the handler's own: coroutine frames were the largest part of
        the dispatcher's cost per message.
        """
        try:
            if job.state != "queued":
                return  # nak'ed while it waited (shutdown)
            if self.stopping:
                await self.nak(job, 0.0)
                return
            verdict = self._admit(job)
            if verdict is None and self._waiting_before:
                verdict = await self._before(job)
            if verdict is None:
                # The handler runs inside its lane's worker task (no task per message);
                # to interrupt it, middleware or shutdown cancel that task while
                # ``job.task`` is set and mark why in ``job.cancel_reason``.
                started = time.monotonic()
                route, message, env = job.route, job.message, job.envelope
                assert route is not None and env is not None and message is not None
                ctx = Context(self, job, env, message, started)
                call = self._wrapped(job, route, ctx) if self._wrap_hooks else None
                job.task = worker
                job.state = "running"
                try:
                    result = await (route.fn(message, ctx) if call is None else call())
                except asyncio.CancelledError:
                    if job.cancel_reason is None:
                        raise  # the lane itself is being torn down
                    attempt = Attempt(interrupted=True, seconds=time.monotonic() - started)
                except Exception as err:
                    attempt = Attempt(error=err, seconds=time.monotonic() - started)
                else:
                    attempt = Attempt(result=result, seconds=time.monotonic() - started)
                finally:
                    job.task = None
                    if job.cancel_reason is not None:
                        while worker.cancelling():
                            worker.uncancel()
                verdict = self._judge(job, attempt)
            if type(verdict) is Ack and verdict.result is None:
                # Nothing to publish: ack (``ack``, without a coroutine of its own).
                try:
                    await job.msg.ack()
                except Exception as err:  # (``quietly``'s, inline)
                    not_sent(err)
                self._remember(job, "ack")
                for mw in self._after_hooks:
                    mw.after(job, verdict)
            else:
                await self.settle(job, verdict)
        except Exception:
            log.exception("router failed to settle a message on %s", job.msg.subject)
            await self.nak(job, backoff(job.deliveries))
        finally:
            self._release(job)

    def _release(self, job: Job) -> None:
        job.state = "done"
        sequence = job.sequence
        if sequence is not None and self.by_sequence.get(sequence) is job:
            del self.by_sequence[sequence]
        held = self.held
        if job in held:
            held.remove(job)
            for mw in self._in_flight_hooks:
                mw.in_flight(len(held))
            self.slot_freed.set()

    def _in_flight(self) -> None:
        for mw in self._in_flight_hooks:
            mw.in_flight(len(self.held))

    # -- one message -------------------------------------------------------------

    def _admit(self, job: Job) -> Verdict | None:
        """Decode and route ``job`` and run the synchronous checks: a verdict settles it
        without its handler; None lets it run (after any waiting ``before``)."""
        msg = job.msg
        try:  # (``envelope.unwrap``, inline)
            env = Envelope.from_headers(msg.headers)
            job.message = envelope.decode(env.type, msg.data)
        except envelope.UnknownMessageType as err:
            if self._events_intake and job.type_name != "unknown":
                return Ack(label="ignored")  # a newer producer's event: open world
            return GiveUp(FailureOutcome.PERMANENT, f"undecodable message: {err}", label="invalid")
        except ValueError as err:
            return GiveUp(FailureOutcome.PERMANENT, f"undecodable message: {err}", label="invalid")
        job.envelope = env
        job.route = self.router.route(env.type)
        if job.route is None and self._events_intake:
            return Ack(label="ignored")
        if job.route is None:
            reason = f"the {self.service.value} service has no handler for {job.type_name}"
            return GiveUp(FailureOutcome.PERMANENT, reason, label="invalid")
        for check in self._checks:  # (none when some ``before`` waits: see ``_before``)
            verdict = check(job)
            if verdict is not None:
                return verdict
        return None

    async def _before(self, job: Job) -> Verdict | None:
        """The ``check`` and ``before`` hooks in the chain's order, when some ``before`` waits."""
        for mw, check in self._before_hooks:
            verdict = check(job) if check is not None else await mw.before(job)
            if verdict is not None:
                return verdict
        return None

    def _wrapped(self, job: Job, route: Route, ctx: Context) -> Call:
        """The handler's call through the ``wrap`` hooks."""
        message = ctx.message

        async def handle() -> Any:
            return await route.fn(message, ctx)

        call: Call = handle
        for mw in self._wrap_hooks:
            call = mw.wrap(job, call)
        return call

    def _judge(self, job: Job, attempt: Attempt) -> Verdict:
        """The one rule from a handler's end to a verdict: middleware in order, then success.

        Interrupted by shutdown, the job goes back at once for another replica;
        a handler that raised ``Canceled`` itself is canceled all the same.
        """
        shutdown = job.cancel_reason == "shutdown"
        failed = attempt.interrupted or attempt.error is not None
        if shutdown and failed and not isinstance(attempt.error, Canceled):
            return Retry(0.0)
        for mw in self._judge_hooks:
            verdict = mw.judge(job, attempt)
            if verdict is not None:
                return verdict
        if attempt.error is None:
            return Ack(attempt.result, attempt.seconds)
        return Retry(backoff(job.deliveries), "error")  # no middleware judged: retry anyway

    # -- settling ----------------------------------------------------------------

    async def settle(self, job: Job, verdict: Verdict) -> None:
        if isinstance(verdict, Ack):
            verdict = await self._succeed(job, verdict)
        elif isinstance(verdict, GiveUp):
            verdict = await self._give_up(job, verdict)
        else:
            await self.nak(job, verdict.delay)
        for mw in self._after_hooks:
            mw.after(job, verdict)

    async def _succeed(self, job: Job, verdict: Ack) -> Verdict:
        outputs = as_messages(verdict.result)
        if outputs:
            try:
                await self.publish(outputs, cause=job.cause)
            except Exception as err:
                log.warning("could not publish results: %s", err, extra=self._extra(job))
                retry = Retry(backoff(job.deliveries), "error")
                await self.nak(job, retry.delay)
                return retry
        await self.ack(job)
        return verdict

    async def _give_up(self, job: Job, verdict: GiveUp) -> Verdict:
        """Terminate: publish the Failed event (and what middleware adds), then term."""
        verdict = GiveUp(
            verdict.outcome,
            scrub(verdict.reason),
            [scrub(line) for line in verdict.detail],
            verdict.label,
        )
        identity = Identity.of(job.message, job.msg.data)
        extra = {"migration": identity.migration, "vm": identity.vm, "type": job.type_name}
        canceled = verdict.outcome is FailureOutcome.CANCELED
        try:
            if identity.migration:
                failed = self.failed_type(
                    plan=identity.plan,
                    migration=identity.migration,
                    vm=identity.vm,
                    command_type=job.type_name,
                    step=identity.step,
                    attempt=identity.attempt,
                    reason=verdict.reason,
                    detail=verdict.detail,
                    deliveries=job.deliveries,
                    canceled=canceled,
                    outcome=verdict.outcome,
                )
                await self.publisher.publish(failed, cause=job.cause)
            for mw in self.middleware:
                await mw.reported(job, verdict)
        except Exception as err:
            log.error("could not report a failed message, will retry: %s", err, extra=extra)
            retry = Retry(backoff(job.deliveries))
            await self.nak(job, retry.delay)
            return retry
        log_fn = log.info if canceled else log.error
        log_fn("gave up on %s: %s", job.type_name, verdict.reason, extra=extra)
        await quietly(job.msg.term())
        self._remember(job, "term")
        return verdict

    async def ack(self, job: Job) -> None:
        try:
            await job.msg.ack()
        except Exception as err:  # (``quietly``, without a coroutine of its own)
            not_sent(err)
        self._remember(job, "ack")

    async def nak(self, job: Job, delay: float) -> None:
        if job.state == "done":
            return
        job.state = "done"
        if job.sequence is not None and self.by_sequence.get(job.sequence) is job:
            del self.by_sequence[job.sequence]  # its redelivery is the wanted retry
        await quietly(job.msg.nak(delay=delay if delay > 0 else None))

    def _remember(self, job: Job, verb: str) -> None:
        sequence, settled = job.sequence, self.settled
        if sequence is None:
            return
        if sequence in settled:
            settled.move_to_end(sequence)  # (a new one goes to the end by itself)
        settled[sequence] = verb
        while len(settled) > SETTLED_MEMORY:
            settled.popitem(last=False)

    @staticmethod
    def _extra(job: Job) -> dict[str, str]:
        message = job.message
        migration, vm = (message.migration, message.vm) if message is not None else ("", "")
        return {"migration": migration, "vm": vm, "type": job.type_name}


def _implementing(middleware: Sequence[Middleware], hook: str) -> list[Middleware]:
    """The middleware, in order, whose ``hook`` is their own (not the base's no-op)."""
    return [mw for mw in middleware if _implements(mw, hook)]


def _implements(mw: Middleware, hook: str) -> bool:
    default = getattr(Middleware, hook)
    return getattr(type(mw), hook, default) is not default
