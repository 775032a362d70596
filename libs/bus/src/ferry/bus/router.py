"""Handlers of one service, and where they take their work from.

Handlers only compute outcomes (return events, raise ``PermanentError`` or
``TemporaryError``); everything that makes at-least-once delivery safe lives in
the bus library, once, in small parts:

* :mod:`ferry.bus.consumer` binds the durable pull consumer, fetches as many
  messages as there are free slots, and shuts down gracefully;
* :mod:`ferry.bus.dispatcher` runs one (migration, vm) lane at a time per VM,
  calls the handler, and carries out the verdict: publish then ack, nak, or
  publish the service's ``Failed`` (with its ``outcome``) and terminate;
* :mod:`ferry.bus.middleware` decides and observes around that: retries with
  backoff until out of deliveries, cancellation, dead letters, keep-alive
  (in-progress acks), metrics, and opt-in time limits.

The in-memory test broker (``ferry.testing.broker``) drives the same
dispatcher and middleware without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from ferry.bus import middleware as _middleware
from ferry.bus.consumer import Consumer, events_consumer_name
from ferry.bus.context import Context
from ferry.bus.job import Handler, Route
from ferry.bus.middleware import Middleware, Observer
from ferry.bus.middleware.dead_letters import (
    DELIVERIES_HEADER,
    ORIGINAL_SUBJECT_HEADER,
    REASON_HEADER,
)
from ferry.bus.outcome import (
    BACKOFF_BASE_SECONDS,
    BACKOFF_CAP_SECONDS,
    Result,
    backoff,
    scrub,
)
from ferry.proto.base import Message
from ferry.proto.subjects import Service

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

M = TypeVar("M", bound=Message)


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
    """Handlers of one service, and the loop that feeds them from the bus.

    ``middleware`` is added after the default chain (metrics, keep-alive,
    cancellation, dead letters, retries), e.g. ``[TimeLimit(600)]``.
    """

    def __init__(
        self,
        service: Service,
        intake: Intake | None = None,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        self.service = service
        self.intake = intake or Intake.commands()
        self.extra_middleware: tuple[Middleware, ...] = tuple(middleware)
        # The handlers' own Prometheus collectors, exposed by the runtime with its
        # metrics (the bus never imports prometheus-client, so they are opaque here).
        self.collectors: list[object] = []
        # HTTP routes (aiohttp ``RouteDef``s) served by the runtime on the service's
        # HTTP server beside /metrics (the bus never imports aiohttp: opaque here).
        self.http_routes: list[object] = []
        self._routes: dict[str, Route] = {}

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
            self._routes[name] = Route(cls, fn, default if cancelable is None else cancelable)
            return fn

        return register

    @property
    def types(self) -> list[str]:
        return sorted(self._routes)

    def route(self, type_name: str) -> Route | None:
        return self._routes.get(type_name)

    def middleware(self, observer: Observer | None = None) -> list[Middleware]:
        """A fresh chain for one run: the defaults, then this router's own."""
        return [*_middleware.defaults(observer), *self.extra_middleware]

    async def run(
        self,
        bus: Bus,
        concurrency: int = 4,
        stop: asyncio.Event | None = None,
        grace_seconds: float = 30.0,
        observer: Observer | None = None,
        fetch_wait: float = 1.0,
        depth_seconds: float = 15.0,
    ) -> None:
        """Dispatch until ``stop`` is set (or the task is cancelled), then shut down.

        Every ``depth_seconds`` the consumers' waiting messages go to the observer."""
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        consumer = Consumer(
            self, bus, self.middleware(observer), concurrency, fetch_wait, depth_seconds
        )
        await consumer.serve(stop or asyncio.Event(), grace_seconds)


__all__ = [
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_CAP_SECONDS",
    "DELIVERIES_HEADER",
    "ORIGINAL_SUBJECT_HEADER",
    "REASON_HEADER",
    "Context",
    "Handler",
    "Intake",
    "Observer",
    "Result",
    "Route",
    "Router",
    "backoff",
    "events_consumer_name",
    "scrub",
]
