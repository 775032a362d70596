"""Streams, consumers and buckets, declared idempotently from one place.

Every process may call :func:`declare` at start-up: it creates what is missing
and updates what drifted, so there is no separate "setup" step to forget and
replicas racing to declare the same thing all succeed. The layout:

* ``FERRY_EVENTS`` (``ferry.evt.>``): the audit log. Limits retention and file
  storage so every event stays until it ages out, whoever has read it.
* ``FERRY_DLQ`` (``ferry.dlq.>``): copies of commands that were given up on, with
  the reason in a header, kept as long as the events.
* ``FERRY_CMD_<SERVICE>`` (``ferry.cmd.<service>.>``): one work queue per service.
  Work-queue retention deletes a command once acknowledged; the one durable pull
  consumer ``<service>-workers`` is shared by every replica, so replicas add
  workers rather than duplicate work.
* The key-value buckets of :class:`ferry.proto.subjects.Bucket`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from nats.js import api
from nats.js.errors import APIError, NotFoundError

from ferry.proto import subjects
from ferry.proto.subjects import Bucket, Service

if TYPE_CHECKING:
    from ferry.bus.connection import Bus

log = logging.getLogger(__name__)

_DAY = 24 * 3600
_STREAM_NAME_IN_USE = 10058
# Work queues keep every replica supplied; the bound only protects the server.
_MAX_ACK_PENDING = 10_000


@dataclass(frozen=True, slots=True)
class TopologySettings:
    """How long things are kept and how hard the bus retries.

    The defaults suit a production cluster; tests shrink ``ack_wait_seconds``
    to see redeliveries quickly.
    """

    events_max_age_seconds: float = 30 * _DAY
    """How long the audit stream and the dead letters keep a message."""
    duplicate_window_seconds: float = 120.0
    """A publish with a Nats-Msg-Id seen within this window is dropped."""
    ack_wait_seconds: float = 30.0
    """A delivered command not acked (or in-progress acked) in this time is redelivered."""
    max_deliver: int = 5
    """Deliveries of one command before the router gives up on it."""
    storage: Literal["file", "memory"] = "file"
    """Stream storage; file so that acknowledged data survives a crash."""
    replicas: int = 1
    """Stream replicas in a clustered JetStream."""

    def storage_type(self) -> api.StorageType:
        return api.StorageType.FILE if self.storage == "file" else api.StorageType.MEMORY


def _history(bucket: Bucket) -> int:
    return 1 if bucket in (Bucket.CANCEL, Bucket.LOCKS) else 5


def events_stream(settings: TopologySettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.EVENTS_STREAM,
        description="Ferry audit log: every event of every migration",
        subjects=[subjects.all_events()],
        retention=api.RetentionPolicy.LIMITS,
        storage=settings.storage_type(),
        max_age=settings.events_max_age_seconds,
        duplicate_window=settings.duplicate_window_seconds,
        num_replicas=settings.replicas,
        discard=api.DiscardPolicy.OLD,
        allow_direct=True,
    )


def dead_letter_stream(settings: TopologySettings) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.DEAD_LETTER_STREAM,
        description="Ferry commands that were given up on, with the reason",
        subjects=[subjects.all_dead_letters()],
        retention=api.RetentionPolicy.LIMITS,
        storage=settings.storage_type(),
        max_age=settings.events_max_age_seconds,
        duplicate_window=settings.duplicate_window_seconds,
        num_replicas=settings.replicas,
        discard=api.DiscardPolicy.OLD,
    )


def command_stream(settings: TopologySettings, service: Service) -> api.StreamConfig:
    return api.StreamConfig(
        name=subjects.command_stream(service),
        description=f"Ferry work queue of the {service.value} service",
        subjects=[subjects.commands_of(service)],
        retention=api.RetentionPolicy.WORK_QUEUE,
        storage=settings.storage_type(),
        duplicate_window=settings.duplicate_window_seconds,
        num_replicas=settings.replicas,
        discard=api.DiscardPolicy.OLD,
    )


def command_consumer(settings: TopologySettings, service: Service) -> api.ConsumerConfig:
    name = subjects.command_consumer(service)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        description=f"every replica of the {service.value} service",
        deliver_policy=api.DeliverPolicy.ALL,
        ack_policy=api.AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_seconds,
        # No server-side cap: deliveries to a replica that was killed count too, and a
        # capped command would silently stay in the queue forever. The router gives up
        # on a handler that keeps failing after ``settings.max_deliver`` deliveries.
        max_deliver=-1,
        max_ack_pending=_MAX_ACK_PENDING,
        replay_policy=api.ReplayPolicy.INSTANT,
    )


async def declare(
    bus: Bus,
    settings: TopologySettings | None = None,
    services: Iterable[Service] = (),
) -> None:
    """Create or update the shared streams, the given services' queues, and the buckets."""
    settings = settings or bus.settings
    await ensure_stream(bus, events_stream(settings))
    await ensure_stream(bus, dead_letter_stream(settings))
    for service in services:
        await ensure_stream(bus, command_stream(settings, service))
        await bus.js.add_consumer(
            subjects.command_stream(service), config=command_consumer(settings, service)
        )
    for bucket in Bucket:
        await ensure_bucket(bus, settings, bucket)


async def ensure_stream(bus: Bus, config: api.StreamConfig) -> api.StreamInfo:
    """Create the stream, or update it when it exists with another configuration."""
    try:
        return await bus.js.add_stream(config)
    except APIError as err:
        if err.err_code != _STREAM_NAME_IN_USE:
            raise
    log.info("updating stream %s to the declared configuration", config.name)
    return await bus.js.update_stream(config)


async def ensure_bucket(bus: Bus, settings: TopologySettings, bucket: Bucket) -> None:
    """Create a key-value bucket, or bring an existing one's history and storage in line."""
    history = _history(bucket)
    try:
        await bus.js.create_key_value(
            bucket=bucket.value,
            history=history,
            storage=settings.storage_type(),
            replicas=settings.replicas,
            direct=True,
        )
        return
    except APIError as err:
        if err.err_code != _STREAM_NAME_IN_USE:
            raise
    stream = f"KV_{bucket.value}"
    try:
        info = await bus.js.stream_info(stream)
    except NotFoundError:
        raise
    config = info.config
    if config.max_msgs_per_subject != history or config.num_replicas != settings.replicas:
        log.info("updating bucket %s to history %d", bucket.value, history)
        config.max_msgs_per_subject = history
        config.num_replicas = settings.replicas
        await bus.js.update_stream(config)
