"""Metrics: every settled message, redelivery, in-flight count and queue depth goes to an
:class:`Observer`.

The observer is a protocol so that the bus library stays free of a metrics
client; the runtime implements it with prometheus-client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ferry.bus.middleware.base import Middleware
from ferry.bus.outcome import Ack, Verdict

if TYPE_CHECKING:
    from ferry.bus.job import Job


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
    def waiting(self, consumer: str, n: int) -> None: ...


class NoObserver:
    def handled(self, type: str, seconds: float) -> None:
        pass

    def failed(self, type: str, reason: str) -> None:
        pass

    def redelivered(self, type: str) -> None:
        pass

    def in_flight(self, n: int) -> None:
        pass

    def waiting(self, consumer: str, n: int) -> None:
        pass


class Metrics(Middleware):
    """Reports to ``observer``; first in the chain so that it sees every routed message."""

    def __init__(self, observer: Observer | None = None) -> None:
        self.observer: Observer = observer or NoObserver()

    def in_flight(self, n: int) -> None:
        self.observer.in_flight(n)

    def waiting(self, consumer: str, n: int) -> None:
        self.observer.waiting(consumer, n)

    def check(self, job: Job) -> Verdict | None:
        if job.deliveries > 1:
            self.observer.redelivered(job.type_name)
        return None

    def after(self, job: Job, verdict: Verdict) -> None:
        label = verdict.label
        if isinstance(verdict, Ack) and label is None:
            self.observer.handled(job.type_name, verdict.seconds)
        elif label is not None:  # a retry without a label is a hand-back, not a failure
            self.observer.failed(job.type_name, label)
