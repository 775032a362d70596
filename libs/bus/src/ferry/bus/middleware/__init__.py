"""Cross-cutting behaviour around handlers, one concern per module, as dramatiq does.

The dispatcher calls every middleware's hooks in order; each hook has a
do-nothing default, so a middleware implements only what it is about:

``start`` / ``stop``
    around a run (background work: the cancel watch, keep-alive);
``in_flight``
    whenever the number of held messages changes;
``check`` / ``before``
    after a message is decoded and routed, before its handler; a verdict
    returned here settles the message without running the handler. ``check`` is
    the synchronous form, for a middleware that decides without waiting (metrics,
    cancellation): it runs for every message, and a coroutine each would cost more
    than the decision; ``before`` may wait. Either way, in the chain's order;
``wrap``
    around the handler call itself (time limits, tracing spans);
``judge``
    after the handler: the first verdict returned decides (retry, give up);
    none means success when the handler returned;
``reported``
    while a give-up is reported, after the ``Failed`` event (dead letters); an
    error here naks so the report is tried again;
``after``
    once the message is settled, with the verdict carried out (metrics).

:func:`defaults` is the chain every router runs; the order matters: metrics
sees every message first, cancellation is judged before retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from ferry.bus.middleware.base import Call, Middleware
from ferry.bus.middleware.cancellation import Cancellation
from ferry.bus.middleware.dead_letters import DeadLetters
from ferry.bus.middleware.keep_alive import KeepAlive
from ferry.bus.middleware.metrics import Metrics, Observer
from ferry.bus.middleware.retries import Retries
from ferry.bus.middleware.time_limit import TimeLimit, TimeLimitExceeded

T = TypeVar("T")


def defaults(observer: Observer | None = None) -> list[Middleware]:
    """The chain of every router: metrics, keep-alive, cancellation, dead letters, retries."""
    return [Metrics(observer), KeepAlive(), Cancellation(), DeadLetters(), Retries()]


def find(chain: Sequence[Middleware], kind: type[T]) -> T | None:
    """The first middleware of ``kind`` in ``chain``."""
    for mw in chain:
        if isinstance(mw, kind):
            return mw
    return None


__all__ = [
    "Call",
    "Cancellation",
    "DeadLetters",
    "KeepAlive",
    "Metrics",
    "Middleware",
    "Observer",
    "Retries",
    "TimeLimit",
    "TimeLimitExceeded",
    "defaults",
    "find",
]
