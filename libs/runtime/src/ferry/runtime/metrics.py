"""Prometheus metrics of a service, fed by the bus router through its observer hooks.

The bus library reports what happened to each message (handled, failed,
redelivered, how many in flight) through a small ``Observer`` protocol and never
imports prometheus-client; this module is that observer. Each :class:`Metrics`
owns its registry, so tests and several runtimes in one process do not collide.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

# Handlers range from a KV update (milliseconds) to a virt-v2v run (an hour).
DURATION_BUCKETS = (0.005, 0.025, 0.1, 0.5, 1, 5, 30, 120, 600, 1800, 3600, float("inf"))

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The ``ferry_…`` metrics of one service; implements the router's observer."""

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self._handled = Counter(
            "ferry_messages_handled",
            "Messages whose handler succeeded (result published, message acked).",
            ["service", "type"],
            registry=self.registry,
        )
        self._failed = Counter(
            "ferry_messages_failed",
            "Handler failures, by outcome: retry (nak), permanent (term + dead letter).",
            ["service", "type", "reason"],
            registry=self.registry,
        )
        self._redelivered = Counter(
            "ferry_messages_redelivered",
            "Messages received again after a nak, a crash or an ack timeout.",
            ["service", "type"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "ferry_handler_duration_seconds",
            "Time a handler ran, successful or not.",
            ["service", "type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._in_flight = Gauge(
            "ferry_in_flight",
            "Handlers running right now in this replica.",
            ["service"],
            registry=self.registry,
        )
        self._in_flight.labels(self.service).set(0)
        self._waiting = Gauge(
            "ferry_queue_depth",
            "Messages waiting on a consumer of this service, not yet delivered to a replica.",
            ["service", "consumer"],
            registry=self.registry,
        )

    # -- the router's Observer protocol ---------------------------------------

    def handled(self, type: str, seconds: float) -> None:
        self._handled.labels(self.service, type).inc()
        self._duration.labels(self.service, type).observe(seconds)

    def failed(self, type: str, reason: str) -> None:
        self._failed.labels(self.service, type, reason).inc()

    def redelivered(self, type: str) -> None:
        self._redelivered.labels(self.service, type).inc()

    def in_flight(self, n: int) -> None:
        self._in_flight.labels(self.service).set(n)

    def waiting(self, consumer: str, n: int) -> None:
        self._waiting.labels(self.service, consumer).set(n)

    # -- exposition ------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
